"""fusedopt's parameter schedulers: mmengine's schedulers, writing the device table.

Every mmengine scheduler (ConstantLR, LinearLR, StepLR, MultiStepLR, ExponentialLR,
CosineAnnealingLR, PolyLR, OneCycleLR, CosineRestartLR, ReduceOnPlateauLR), the *Momentum
twins (``betas[0]`` on the Adam family, mirrored into ``group['momentum']`` as mmengine keeps
it) and the generic *ParamScheduler forms, with mmengine's
semantics: ``begin``/``end`` windows with milestones and periods counted from ``begin``,
``by_epoch``, ``build_iter_from_epoch`` / ``convert_to_iter_based``, chaining in list order
(each scheduler updates the current values; values stay put in gaps between windows). They
work on any torch optimizer; on fusedopt optimizers a step writes the param_group dicts and the
device hyper-parameter table together, without a host sync (Note [scheduler writes], _slot.py). Graph mode:
``DeviceSchedule`` (device.py). Config: ``build_param_scheduler(optim_wrapper, cfg, epoch_length)``.
In an mmengine Runner register ``compat.mixed_with(mmengine.optim._ParamScheduler)``: the Runner
(resume) and its ParamSchedulerHook (validation metrics) check that base class.

Resume
------
As in torch and mmengine, ``state_dict()`` is every attribute but the optimizer (the schedule's
arguments, what is derived from them, the progress: ``last_step``, ``_global_step``,
``base_values``, ReduceOnPlateau's ``best``...), and ``load_state_dict()`` restores every one:
the checkpoint's schedule replaces the one the object was built with (a ``UserWarning`` lists
what differs). Two keys are added (Note [scheduler state], base.py): ``_last_value`` and
``values``, the scheduled parameter's current value in every group, which ``load_state_dict()``
writes back into the optimizer. So the order of "load the optimizer state" and "build the
schedulers" does not matter, and the constructor's first step (LinearLR's ``start_factor``,
ConstantLR's ``factor``...) is never applied twice: with mmengine, building a LinearLR after
loading the optimizer state multiplies the restored lr by start_factor again.

``load_state_dict(state, keep_config=True)`` is the opt-in for a changed config: it restores the
progress only (counters, base values, the values), the schedule stays the one built, and it
continues from the saved point with its chainable update. A changed multiplicative schedule
(MultiStepLR milestones, StepLR step_size, ExponentialLR gamma) then acts from the resume point
on, without re-deriving past decays; for CosineAnnealing/Poly/Linear a changed T_max/end bends
the curve from the current value (no jump); OneCycle (not chainable) jumps to the new curve's
value at the saved step. A different number of param groups is an error either way. A state
dict saved by mmengine's scheduler loads too (keys that are not attributes here, such as
OneCycle's ``anneal_func``, are ignored), and mmengine's schedulers load fusedopt's.
"""
from fusedopt.schedulers import schedules as _schedules
from fusedopt.schedulers.base import INF, ParamScheduler
from fusedopt.schedulers.build import build_param_scheduler
from fusedopt.schedulers.device import DeviceSchedule
from fusedopt.schedulers.schedules import *  # noqa: F401,F403

__all__ = [*_schedules.__all__, "ParamScheduler", "DeviceSchedule", "build_param_scheduler"]


def _register():
    try:
        from fusedopt.config.registry import PARAM_SCHEDULERS
    except ImportError:
        return
    for name in _schedules.__all__:
        if PARAM_SCHEDULERS._module_dict.get(name) is None:
            PARAM_SCHEDULERS.register_module(module=getattr(_schedules, name))


_register()
