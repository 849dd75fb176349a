"""build_param_scheduler: mmengine's runner logic for ``param_scheduler`` configs."""
import copy
import inspect
from collections.abc import Mapping, Sequence

__all__ = ["build_param_scheduler"]


def _lookup(type_):
    if inspect.isclass(type_) or callable(type_):
        return type_
    if not isinstance(type_, str):
        raise TypeError(f"type must be a str or valid type, but got {type(type_)}")
    from fusedopt.schedulers import schedules
    name = type_.split(".", 1)[1] if type_.startswith("fusedopt.") else type_
    cls = None
    try:
        from fusedopt.config.registry import PARAM_SCHEDULERS
        cls = PARAM_SCHEDULERS.get(type_)
    except ImportError:  # config layer not there: fusedopt's own schedulers still build
        pass
    if cls is None:
        cls = getattr(schedules, name, None) if name in schedules.__all__ else None
    if cls is None:
        raise KeyError(f"{type_} is not a registered parameter scheduler; known: "
                       f"{', '.join(sorted(schedules.__all__))}")
    return cls


def build_param_scheduler(optim_wrapper, cfg, epoch_length=None):
    """Build the schedulers of ``cfg`` (a dict, a list of dicts, or already built schedulers)
    on ``optim_wrapper`` (an optim wrapper or an optimizer). Returns a list.

    On an ``OptimWrapperDict`` (mmengine's Runner rules): a dict ``{wrapper name: list}``; a
    ``cfg`` dict without ``type`` gives each wrapper its own entry, any other ``cfg`` is built
    for every wrapper.

    ``convert_to_iter_based=True`` builds through ``cls.build_iter_from_epoch`` and needs
    ``epoch_length`` (iterations per epoch). Step the ``by_epoch=False`` schedulers after every
    iteration and the ``by_epoch=True`` ones after every epoch, in list order (mmengine's
    ParamSchedulerHook). Unlike mmengine's runner there is no train loop here, so a missing
    ``end`` stays "forever" (set it in the config).
    """
    wrappers = getattr(optim_wrapper, "optim_wrappers", None)
    if isinstance(wrappers, Mapping):
        per_wrapper = isinstance(cfg, Mapping) and "type" not in cfg
        return {name: build_param_scheduler(w, cfg[name] if per_wrapper else cfg, epoch_length)
                for name, w in wrappers.items()}
    from fusedopt.config.errors import ConfigValueError
    from fusedopt.schedulers.base import ParamScheduler
    cfgs = [cfg] if isinstance(cfg, Mapping) or not isinstance(cfg, Sequence) else list(cfg)
    built = []
    for item in cfgs:
        if isinstance(item, ParamScheduler) or (hasattr(item, "step")
                                                and not isinstance(item, Mapping)):
            built.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"scheduler should be a ParamScheduler object or dict, but got {item}")
        args = copy.deepcopy(dict(item))
        args.pop("_scope_", None)
        cls = _lookup(args.pop("type"))
        args.setdefault("optimizer", optim_wrapper)
        if args.pop("convert_to_iter_based", False):
            if epoch_length is None or not args.get("by_epoch", True):
                raise ConfigValueError("Only epoch-based parameter scheduler can be converted to "
                                       "iter-based, and `epoch_length` should be set")
            if not hasattr(cls, "build_iter_from_epoch"):
                raise TypeError(f"{cls.__name__} cannot be converted to iter-based")
            built.append(cls.build_iter_from_epoch(epoch_length=epoch_length, **args))
        else:
            built.append(cls(**args))
    return built
