"""Config layer: registries, ``build_optim_wrapper``, optimizer wrappers (mmengine semantics,
no mmengine needed)."""
from fusedopt.config.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS,
                                      PARAM_SCHEDULERS, Registry, build_from_cfg)

_LAZY = {
    "build_optim_wrapper": "fusedopt.config.builder",
    "TORCH_OPTIMIZERS": "fusedopt.config.builder",
    "DefaultOptimWrapperConstructor": "fusedopt.config.constructor",
    "OptimWrapper": "fusedopt.config.optim_wrapper",
    "AmpOptimWrapper": "fusedopt.config.optim_wrapper",
    "OptimWrapperDict": "fusedopt.config.optim_wrapper_dict",
    "ZeroRedundancyOptimizer": "fusedopt.config.zero_optimizer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusedopt.config' has no attribute {name!r}")


__all__ = ["Registry", "build_from_cfg", "OPTIMIZERS", "OPTIM_WRAPPERS",
           "OPTIM_WRAPPER_CONSTRUCTORS", "PARAM_SCHEDULERS", *_LAZY]
