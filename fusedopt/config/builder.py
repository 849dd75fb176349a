"""build_optim_wrapper: mmengine's entry point, standalone."""
from __future__ import annotations

import copy

from torch import nn

from fusedopt.config.registry import OPTIM_WRAPPER_CONSTRUCTORS, torch_optimizer_names

# mmengine's list (mmengine.optim.optimizer.builder.TORCH_OPTIMIZERS): the torch.optim names
# registered in OPTIMIZERS
TORCH_OPTIMIZERS = torch_optimizer_names()


def build_optim_wrapper(model: nn.Module, cfg: dict, *, constructors=None):
    """Build an optimizer wrapper for ``model`` from an mmengine-style ``optim_wrapper`` cfg.

    ``cfg`` may hold ``type`` (default ``'OptimWrapper'``), ``optimizer``, ``paramwise_cfg``,
    ``clip_grad``, ``accumulative_counts``, ``constructor`` (a registered name, a class, or
    ``dict(type=..., **extra_constructor_kwargs)``; default ``DefaultOptimWrapperConstructor``)
    and any other wrapper argument. ``cfg`` is not modified.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"optim_wrapper cfg should be a dict, but got {type(cfg)}")
    registry = OPTIM_WRAPPER_CONSTRUCTORS if constructors is None else constructors
    optim_wrapper_cfg = copy.deepcopy(dict(cfg))
    constructor = optim_wrapper_cfg.pop("constructor", "DefaultOptimWrapperConstructor")
    paramwise_cfg = optim_wrapper_cfg.pop("paramwise_cfg", None)
    if isinstance(constructor, dict):
        if "type" not in constructor:
            raise KeyError('optim_wrapper.constructor must contain the key "type", '
                           f"but got {constructor}")
        constructor_cfg = dict(constructor)
    else:
        constructor_cfg = dict(type=constructor)
    constructor_cfg.update(optim_wrapper_cfg=optim_wrapper_cfg, paramwise_cfg=paramwise_cfg)
    optim_wrapper_constructor = registry.build(constructor_cfg)
    return optim_wrapper_constructor(model)


__all__ = ["build_optim_wrapper", "TORCH_OPTIMIZERS"]
