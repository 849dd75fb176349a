"""fusedopt: fused multi-tensor optimizers for PyTorch.

Importing it is light (torch only) and never fails because a backend is missing
(Note [import never fails]); the config layer, the schedulers and the benchmark load on first use.
"""
from fusedopt.algorithms.adam import FusedAdam, FusedAdamW
from fusedopt.algorithms.lamb import FusedLAMB
from fusedopt.algorithms.lars import FusedLARS
from fusedopt.algorithms.lion import FusedLion
from fusedopt.algorithms.sgd import FusedSGD
from fusedopt.backends import available_backends
from fusedopt.clip import clip_grad_norm_
from fusedopt.optimizer import FusedOptimizer

__version__ = "0.1.0"

_CONFIG_NAMES = ("Registry", "OPTIMIZERS", "OPTIM_WRAPPERS", "OPTIM_WRAPPER_CONSTRUCTORS",
                 "PARAM_SCHEDULERS", "build_optim_wrapper", "DefaultOptimWrapperConstructor",
                 "OptimWrapper", "AmpOptimWrapper", "OptimWrapperDict")


def __getattr__(name):
    # Lazy: the config layer and the schedulers are pure Python but import more than the step
    # needs; `fusedopt.LinearLR` and `fusedopt.build_optim_wrapper` still resolve.
    import importlib
    if name in _CONFIG_NAMES:
        return getattr(importlib.import_module("fusedopt.config"), name)
    if name in ("config", "schedulers"):
        return importlib.import_module(f"fusedopt.{name}")
    if name == "build_param_scheduler" or name.endswith(("LR", "Momentum", "ParamScheduler")):
        schedulers = importlib.import_module("fusedopt.schedulers")
        if name in schedulers.__all__:
            return getattr(schedulers, name)
    raise AttributeError(f"module 'fusedopt' has no attribute {name!r}")


__all__ = ["FusedAdam", "FusedAdamW", "FusedSGD", "FusedLion", "FusedLARS", "FusedLAMB",
           "FusedOptimizer", "available_backends",
           "clip_grad_norm_", *_CONFIG_NAMES]
