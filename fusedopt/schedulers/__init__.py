"""fusedopt's parameter schedulers: mmengine's schedulers, writing the device table.

Every mmengine scheduler (ConstantLR, LinearLR, StepLR, MultiStepLR, ExponentialLR,
CosineAnnealingLR, PolyLR, OneCycleLR, CosineRestartLR, ReduceOnPlateauLR), the *Momentum
twins (``betas[0]`` on the Adam family) and the generic *ParamScheduler forms, with mmengine's
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
``state_dict()`` holds the progress (``last_step``, ``_global_step``, ``base_values``,
ReduceOnPlateau's ``best``/``num_bad_epochs``/``cooldown_counter``), the scheduled parameter's
current value in every group (``values``) and the schedule's config. ``load_state_dict()``
restores the progress and writes ``values`` back into the optimizer. So the order of
"load the optimizer state" and "build the schedulers" does not matter, and the constructor's
first step (LinearLR's ``start_factor``, ConstantLR's ``factor``, OneCycle's initial value...)
is never applied twice: mmengine keeps only counters, so building a LinearLR after loading the
optimizer state multiplies the restored lr by start_factor again; here the saved values win.

When the config changes between save and resume:
* the schedule is the *new* one (the object you built), unlike mmengine where the saved
  attributes silently replace the new ones. A ``UserWarning`` lists every changed field
  (begin, end, by_epoch, factors, gamma, milestones, T_max, periods, ...).
* progress is the *saved* one: the new schedule continues from the saved ``last_step`` and
  the saved values, with its chainable update. A changed multiplicative schedule
  (MultiStepLR milestones, StepLR step_size, ExponentialLR gamma) therefore acts from the
  resume point on, without re-deriving past decays; for CosineAnnealing/Poly/Linear a
  changed T_max/end bends the curve from the current value (no jump); OneCycle (not
  chainable) jumps to the new curve's value at the saved step.
* the base values (``initial_lr``...) are the saved ones: a changed optimizer lr in the config
  does not rescale a resumed schedule (as in torch and mmengine). To restart a schedule, do
  not load its state.
* a different number of param groups is an error (the saved values do not fit).
A state dict saved by mmengine's scheduler loads too (its counters and base values; its
attributes are compared with the new config and the warning lists the differences).
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
