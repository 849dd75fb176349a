"""Entry point mmengine imports by convention for a scope (``import_module(f'{scope}.registry')``)
when a config says ``type='fusedopt.X'`` or ``default_scope='fusedopt'``. It imports mmengine:
standalone code never imports this module (use ``fusedopt.config`` instead)."""
from fusedopt.mmengine import (HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,  # noqa: F401
                               OPTIMIZERS, PARAM_SCHEDULERS)
