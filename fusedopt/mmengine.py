"""mmengine adapter: fusedopt's classes in child registries of mmengine's (scope ``'fusedopt'``).

``import fusedopt.mmengine`` (or any ``type='fusedopt.X'`` in an mmengine config: mmengine then
imports ``fusedopt.registry``, which imports this module) makes these resolvable:

- ``optimizer=dict(type='fusedopt.FusedAdamW', ...)`` (every class of fusedopt.algorithms);
- ``optim_wrapper=dict(type='fusedopt.OptimWrapper' | 'fusedopt.AmpOptimWrapper', ...)``: the
  fused wrappers (clip inside the step, fused AMP step) as subclasses of mmengine's wrappers,
  so the Runner, its hooks and mmengine's schedulers accept them;
- ``constructor='fusedopt.DefaultOptimWrapperConstructor'``;
- ``custom_hooks=[dict(type='fusedopt.LazyScalarLogHook')]``: logs grad norms without a host sync
  per iteration (one read per logging interval);
- ``default_scope='fusedopt'``: plain names (``'OptimWrapper'``) resolve to fusedopt's first and
  fall back to mmengine's for everything else.

Also ``OptimWrapperDict`` (fusedopt's, also an ``mmengine.optim.OptimWrapperDict``) and
``type='fusedopt.ZeroRedundancyOptimizer'`` (its ``optimizer_type`` may be a fusedopt optimizer).
Warnings and ``paramwise_options`` of the wrappers and the constructor go to mmengine's current
``MMLogger``, as mmengine's own do.

Nothing is registered in mmengine's root registries (DeepSpeed's strategy registers its own
``FusedAdam`` there); every registration below goes into a child with scope ``'fusedopt'``.
A ``type`` that no registry of the tree knows, looked up through one of the fusedopt children
fusedopt fills (optimizers, wrappers, constructors, schedulers: ``'fusedopt.FusedAdamm'``,
or such a name under ``default_scope='fusedopt'``), raises fusedopt's
"did you mean" ``UnknownTypeError`` (a KeyError and a TypeError) from the lookup itself: mmengine
returns None there and its constructor fails later with "TypeError: None is not a callable
object". A plain unknown name outside the fusedopt scope never reaches fusedopt.
"""
from __future__ import annotations

import mmengine.registry.root as _mm_root
from mmengine.hooks import Hook as _MMHook
from mmengine.logging import MMLogger as _MMLogger
from mmengine.optim import AmpOptimWrapper as _MMAmpOptimWrapper
from mmengine.optim import OptimWrapper as _MMOptimWrapper
from mmengine.optim import OptimWrapperDict as _MMOptimWrapperDict
from mmengine.registry import Registry as _MMRegistry

from fusedopt.algorithms import optimizer_classes
from fusedopt.config import constructor as _constructor
from fusedopt.config import optim_wrapper as _wrapper
from fusedopt.config import optim_wrapper_dict as _wrapper_dict
from fusedopt.config import zero_optimizer as _zero
from fusedopt.config.errors import UnknownTypeError
from fusedopt.config.registry import unknown_name_message

SCOPE = "fusedopt"


class _Node(_MMRegistry):
    """fusedopt's child of one of mmengine's root registries. A name no registry of the tree
    knows raises fusedopt's "did you mean" error instead of giving None (module docstring)."""

    def get(self, key):
        found = super().get(key)
        if found is None:
            names = list(self.module_dict) + [n for n in self.parent.module_dict
                                              if n not in self.module_dict]
            raise UnknownTypeError(unknown_name_message(
                key, self.split_scope_key(key)[1], names,
                f"{SCOPE}::{self.name} (nor mmengine's)"))
        return found

    def __contains__(self, key):
        try:
            return super().get(key) is not None
        except KeyError:
            return False


# the registries fusedopt fills: their nodes answer an unknown name with fusedopt's error
_OWN = ("OPTIMIZERS", "OPTIM_WRAPPERS", "OPTIM_WRAPPER_CONSTRUCTORS", "PARAM_SCHEDULERS")


def _child(name: str, parent: _MMRegistry) -> _MMRegistry:
    existing = parent.children.get(SCOPE)
    if existing is not None:     # re-import / reload: reuse the node already in the tree
        return existing
    return (_Node if name in _OWN else _MMRegistry)(parent.name, parent=parent, scope=SCOPE)


# one child per root registry, so default_scope='fusedopt' finds a node in every tree (lookups
# of names fusedopt does not define fall back to mmengine's root entries)
_CHILDREN = {name: _child(name, reg) for name, reg in vars(_mm_root).items()
             if isinstance(reg, _MMRegistry) and reg.parent is None}

OPTIMIZERS = _CHILDREN["OPTIMIZERS"]
OPTIM_WRAPPERS = _CHILDREN["OPTIM_WRAPPERS"]
OPTIM_WRAPPER_CONSTRUCTORS = _CHILDREN["OPTIM_WRAPPER_CONSTRUCTORS"]
PARAM_SCHEDULERS = _CHILDREN["PARAM_SCHEDULERS"]
HOOKS = _CHILDREN["HOOKS"]


class _MMLogging:
    """Log through mmengine's current MMLogger (its ``print_log(logger='current')``)."""

    @property
    def logger(self):
        return _MMLogger.get_current_instance()


class OptimWrapper(_MMLogging, _wrapper.OptimWrapper, _MMOptimWrapper):
    """fusedopt's OptimWrapper that is also an ``mmengine.optim.OptimWrapper``."""


class AmpOptimWrapper(_MMLogging, _wrapper.AmpOptimWrapper, _MMAmpOptimWrapper):
    """fusedopt's AmpOptimWrapper that is also an ``mmengine.optim.AmpOptimWrapper``."""


class OptimWrapperDict(_wrapper_dict.OptimWrapperDict, _MMOptimWrapperDict):
    """fusedopt's OptimWrapperDict that is also an ``mmengine.optim.OptimWrapperDict``; holds
    fusedopt's and mmengine's wrappers."""

    wrapper_types = (_wrapper.OptimWrapper, _MMOptimWrapper)


class DefaultOptimWrapperConstructor(_MMLogging, _constructor.DefaultOptimWrapperConstructor):
    """fusedopt's constructor building through mmengine's registries (so optimizers registered
    by mmengine, MMAction2 or user code resolve, and ``type='OptimWrapper'`` means
    fusedopt's wrapper when called from within the fusedopt scope)."""

    optimizers_registry = OPTIMIZERS
    wrappers_registry = OPTIM_WRAPPERS


class LazyScalarLogHook(_MMHook):
    """Let fusedopt wrappers keep grad norms as tensors and hand them to the MessageHub with one
    host read per logging interval (just before LoggerHook, which runs at BELOW_NORMAL)."""

    priority = "ABOVE_NORMAL"

    def __init__(self, interval: int = None):
        self.interval = interval

    def _wrappers(self, runner):
        ow = getattr(runner, "optim_wrapper", None)
        if ow is None:
            return []
        items = ow.values() if hasattr(ow, "values") and callable(ow.values) else [ow]
        return [w for w in items if isinstance(w, _wrapper.OptimWrapper)]

    def _interval(self, runner) -> int:
        if self.interval is None:
            from mmengine.hooks import LoggerHook
            self.interval = next((h.interval for h in runner.hooks if isinstance(h, LoggerHook)),
                                 1)
        return self.interval

    def _flush(self, runner) -> None:
        for w in self._wrappers(runner):
            w.flush_scalars()

    def before_train(self, runner) -> None:
        for w in self._wrappers(runner):
            w.lazy_logging = True

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if (self.every_n_inner_iters(batch_idx, self._interval(runner))
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self._flush(runner)

    def after_train_epoch(self, runner) -> None:
        self._flush(runner)

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        self._flush(runner)

    def after_train(self, runner) -> None:
        self._flush(runner)


def _register(registry: _MMRegistry, module, name=None) -> None:
    # force=True is scoped to fusedopt's own child node (a re-import replaces our own entry)
    registry.register_module(name=name, module=module, force=True)


for _cls in optimizer_classes().values():
    _register(OPTIMIZERS, _cls)
if hasattr(_zero, "ZeroRedundancyOptimizer"):      # torch built with torch.distributed
    class ZeroRedundancyOptimizer(_zero.ZeroRedundancyOptimizer):
        """fusedopt's ZeroRedundancyOptimizer resolving ``optimizer_type`` through mmengine's
        registries (the fusedopt child, then mmengine's root)."""

        optimizers_registry = OPTIMIZERS

    _register(OPTIMIZERS, ZeroRedundancyOptimizer)
_register(OPTIM_WRAPPERS, OptimWrapper)
_register(OPTIM_WRAPPERS, AmpOptimWrapper)
_register(OPTIM_WRAPPER_CONSTRUCTORS, DefaultOptimWrapperConstructor)
_register(HOOKS, LazyScalarLogHook)

# fusedopt's schedulers under their own names, as classes that are also mmengine's
# _ParamScheduler: Runner.resume and ParamSchedulerHook (ReduceOnPlateau's metrics) check for it.
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler  # noqa: E402

from fusedopt.config import PARAM_SCHEDULERS as _FO_SCHEDULERS  # noqa: E402
from fusedopt.schedulers.compat import mixed_with  # noqa: E402

_MIXED = mixed_with(_ParamScheduler)
for _name, _cls in list(_FO_SCHEDULERS.module_dict.items()):
    _register(PARAM_SCHEDULERS, _MIXED.get(_name, _cls), _name)

__all__ = ["SCOPE", "OPTIMIZERS", "OPTIM_WRAPPERS", "OPTIM_WRAPPER_CONSTRUCTORS",
           "PARAM_SCHEDULERS", "HOOKS", "OptimWrapper", "AmpOptimWrapper", "OptimWrapperDict",
           "DefaultOptimWrapperConstructor", "ZeroRedundancyOptimizer", "LazyScalarLogHook"]
