"""Subclasses of fusedopt's schedulers that also derive from another framework's base class.

mmengine's Runner and ParamSchedulerHook check ``isinstance(s, mmengine.optim._ParamScheduler)``:
``Runner.resume`` rebuilds the list of built schedulers through that check (a TypeError
otherwise), and ``after_val_epoch`` hands validation metrics (ReduceOnPlateau*) only to such
instances. An adapter registers ``mixed_with(_ParamScheduler)`` instead of the plain classes::

    from mmengine.optim import _ParamScheduler
    for name, cls in fusedopt.schedulers.compat.mixed_with(_ParamScheduler).items():
        MM_PARAM_SCHEDULERS.register_module(name=name, module=cls, force=True)

The mixed class runs fusedopt's code only (fusedopt's class comes first in the MRO and never
calls the base's ``__init__``); the base contributes its type, and its ``print_value`` if it
has one (mmengine's prints ``verbose`` values through its logger). Importing this module imports
nothing from mmengine.
"""
import sys

__all__ = ["mixed_with"]

_CACHE = {}


def mixed_with(base):
    """{scheduler name: class deriving from fusedopt's scheduler and ``base``}, one class per
    (name, base), picklable by reference (module attribute ``<base name>_<name>``)."""
    from fusedopt.schedulers import schedules
    out = _CACHE.get(base)
    if out is None:
        module = sys.modules[__name__]
        out = {}
        for name in schedules.__all__:
            ours = getattr(schedules, name)
            attr = f"{base.__name__.lstrip('_')}_{name}"
            namespace = {"__module__": __name__, "__qualname__": attr, "__doc__": ours.__doc__}
            if "print_value" in vars(base):
                namespace["print_value"] = vars(base)["print_value"]
            cls = type(name, (ours, base), namespace)
            setattr(module, attr, cls)
            out[name] = cls
        _CACHE[base] = out
    return dict(out)
