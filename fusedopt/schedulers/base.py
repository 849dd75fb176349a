"""ParamScheduler: the base of every fusedopt scheduler (mmengine's ``_ParamScheduler`` semantics).

Counting (as mmengine): ``_global_step`` counts ``step()`` calls (the constructor makes the
first one); while ``begin <= _global_step < end`` each step advances ``last_step`` (0 at
``begin``) and applies the chainable update of the subclass to the *current* values, so
schedulers on the same hyper-parameter compose in list order, and values stay constant in gaps
between windows. How the update reaches the optimizer: Note [scheduler writes] (_slot.py).

Resume: Note [scheduler state] below and the package docstring (fusedopt/schedulers/__init__.py).
"""
import functools
import warnings
import weakref
from collections import Counter

import torch

from fusedopt import _engine
from fusedopt.config.errors import ConfigTypeError, ConfigValueError
from fusedopt.schedulers._slot import Slot, raw_optimizer

__all__ = ["ParamScheduler", "INF"]

INF = int(1e9)


class Scalar:
    """One value updated by the same ``_update`` code as the vectors, in Python floats (the
    optim wrapper's extra group): ``mul_``/``sub_``/``add_``/``copy_`` like a 1-element tensor."""
    __slots__ = ("x",)
    device = torch.device("cpu")

    def __init__(self, x):
        self.x = x

    def mul_(self, a):
        self.x = self.x * a
        return self

    def sub_(self, a):
        self.x = self.x - a
        return self

    def add_(self, a):
        self.x = self.x + a
        return self

    def copy_(self, a):
        self.x = float(a)
        return self

    def __len__(self):
        return 1


def get_slot(optimizer, name):
    slots = optimizer.__dict__.setdefault("_fusedopt_slots", {})
    slot = slots.get(name)
    if slot is None:
        slot = slots[name] = Slot(optimizer, name)
    return slot


# Note [step order warnings]: like torch's and mmengine's schedulers, the constructor wraps the
# ``step`` of the object it was given (optimizer or optim wrapper) in a counter, and the first
# explicit ``scheduler.step()`` warns if that counter says no optimizer step ran yet, or if the
# counter is gone (``optimizer.step`` was replaced afterwards). The protocol is mmengine's
# (``step._with_counter``, ``owner._global_step``), so mmengine's and fusedopt's schedulers on
# one optimizer share one counter. Cost: one Python call and an int increment per step. Steps
# run inside torch.compile are not counted (see ``counted``).
_ORDER_DOC = "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"


def count_steps(owner):
    """Wrap ``owner.step`` in a step counter (once) and reset the counter to -1."""
    step = getattr(owner, "step", None)
    if step is None:
        return
    if not getattr(step, "_with_counter", False):
        func = getattr(step, "__func__", None)
        owner_ref = weakref.ref(owner)       # the wrapper lives on the owner: no cycle

        @functools.wraps(func if func is not None else step)
        def counted(*args, **kwargs):
            obj = owner_ref()
            # inside torch.compile the count is skipped: torch 2.11's Dynamo refuses attribute
            # writes to an optimizer there (2.13 drops them), and the count only feeds a warning
            if not torch.compiler.is_compiling():
                obj._global_step += 1
            call = func.__get__(obj, type(obj)) if func is not None else step
            return call(*args, **kwargs)

        counted._with_counter = True
        try:
            owner.step = counted
        except AttributeError:               # an object without an instance dict: no warnings
            return
    owner._global_step = -1


def warn_step_order(owner):
    if not hasattr(owner, "_global_step"):   # never counted (no step to wrap)
        return
    if not getattr(getattr(owner, "step", None), "_with_counter", False):
        warnings.warn("`optimizer.step` was replaced after the parameter scheduler was built, so "
                      "the scheduler cannot check that `optimizer.step()` runs before "
                      "`scheduler.step()`. Call them in that order; see " + _ORDER_DOC,
                      UserWarning, stacklevel=3)
    elif getattr(owner, "_global_step", 0) < 0:
        warnings.warn("`scheduler.step()` was called before any `optimizer.step()`. Since "
                      "PyTorch 1.1 the order is `optimizer.step()` first, then "
                      "`scheduler.step()`; the other order skips the first value of the "
                      "schedule. See " + _ORDER_DOC, UserWarning, stacklevel=3)


# Note [scheduler state]: as in torch and mmengine, a scheduler's state is every attribute in its
# ``__dict__`` except the optimizer: the schedule's arguments (gamma, milestones, T_max, begin,
# end, by_epoch...), what is derived from them (total_iters, cumulative_periods...), and the
# progress (last_step, _global_step, base_values...). ``load_state_dict`` restores every one of
# them. fusedopt's runtime caches (the shared Slot, device constants, the last values as
# vectors) live in ``__slots__``, outside ``__dict__``, so they are never saved. Two keys are
# added: ``_last_value`` (mmengine's attribute, here computed) and ``values`` (the scheduled
# parameter's current value in every group, written back into the optimizer on load, so that
# resuming does not depend on the order of loading the optimizer and building the schedulers).
_PROGRESS_KEYS = ("last_step", "_global_step", "base_values")


class ParamScheduler:
    """Base class. Subclasses implement ``_update(v, t)`` (in place on a float64 vector, ``t`` a
    Python int; return False when the step leaves the values as they are) and, for graph mode,
    ``_device_update(v, t)`` (``t`` a 0-d int64 tensor; tensor math only, returns the new vector).

    ``_config_keys`` name the attributes that define the schedule: they are saved with the state
    and compared on resume. ``_epoch_scaled`` names the arguments ``build_iter_from_epoch``
    multiplies by ``epoch_length`` (lists element-wise; None stays None).
    """
    _config_keys = ()
    _epoch_scaled = ()
    _runtime_keys = ()           # progress attributes besides _PROGRESS_KEYS (ReduceOnPlateau)
    need_val_args = False
    # runtime caches, not state (Note [scheduler state])
    __slots__ = ("_slot", "_n_main", "_part", "_consts", "_last_host", "_last_extra",
                 "__dict__", "__weakref__")

    def __init__(self, optimizer, param_name, begin=0, end=INF, last_step=-1, by_epoch=True,
                 verbose=False):
        opt = raw_optimizer(optimizer)
        self.optimizer = optimizer
        self.param_name = param_name
        if end <= begin:
            raise ValueError("end should be larger than begin, but got "
                             f"begin={begin}, end={end}")
        self.begin = begin
        self.end = end
        self.by_epoch = by_epoch
        if not isinstance(last_step, int):
            raise ConfigTypeError(f"last_step must be an int >= -1, got {last_step!r}")
        if last_step < -1:
            raise ConfigValueError(f"last_step must be an int >= -1, got {last_step!r}")
        self._slot = get_slot(opt, param_name)
        self._n_main = len(opt.param_groups)
        self._part = None            # None: the optimizer's groups; "extra": base_param_settings
        self._consts = {}
        self._last_host = None
        self._last_extra = None
        self._init_base_values(opt, last_step)
        self.last_step = last_step
        self._global_step = -1
        self.verbose = verbose
        self._init_step()

    def _init_step(self):
        count_steps(self.optimizer)      # Note [step order warnings]
        self.step()

    @property
    def _opt(self):
        return self._slot.optimizer

    # mmengine's optim wrappers with several groups carry ``base_param_settings``, a dummy group
    # that its schedulers update too (``get_lr()['base_lr']``): it is scheduled here as one
    # extra host value after the optimizer's groups (O(1), plain Python floats).
    def _extra_dict(self):
        if self.optimizer is self._slot.optimizer:
            return None
        extra = getattr(self.optimizer, "base_param_settings", None)
        return extra if isinstance(extra, dict) else None

    def _all_groups(self, opt):
        extra = self._extra_dict()
        return list(opt.param_groups) + ([extra] if extra is not None else [])

    def _read_extra(self, extra):
        slot = self._slot
        value = extra[slot.key]
        return float(value if slot.index is None else value[slot.index])

    def _write_extra(self, extra, value):
        slot = self._slot
        if slot.index is None:
            extra[slot.key] = value
        else:
            pair = list(extra[slot.key])
            pair[slot.index] = value
            extra[slot.key] = tuple(pair)
            if slot.mirror is not None:
                extra[slot.mirror] = value

    def _pick(self, seq):
        """The part of a per-group list (base values, min values...) the current update is
        for: the optimizer's groups, or the wrapper's extra group."""
        n = self._n_main
        if self._part is None:
            return list(seq[:n])
        return list(seq[n:n + 1]) if len(seq) > n else [seq[-1]]

    def _init_base_values(self, opt, last_step):
        name = self.param_name
        key = f"initial_{name}"
        groups = self._all_groups(opt)
        if last_step == -1:
            current = self._slot.values()
            extra = self._extra_dict()
            if extra is not None:
                current.append(self._read_extra(extra))
            for group, value in zip(groups, current):
                if key not in group:
                    group[key] = value
        else:
            for i, group in enumerate(groups):
                if key not in group:
                    raise KeyError(f"param '{key}' is not specified in param_groups[{i}] "
                                   "when resuming an optimizer")
        self.base_values = [group[key] for group in groups]

    # ---- config -----------------------------------------------------------------------------
    @classmethod
    def build_iter_from_epoch(cls, *args, begin=0, end=INF, by_epoch=True, epoch_length=None,
                              **kwargs):
        """Build an iter-based instance of this scheduler from an epoch-based config:
        ``begin``/``end`` and the period-like arguments are multiplied by ``epoch_length``."""
        if not by_epoch:
            raise ConfigValueError("Only epoch-based kwargs whose `by_epoch=True` can be "
                                   "converted to iter-based.")
        if epoch_length is None or epoch_length <= 0:
            raise ConfigValueError("`epoch_length` must be a positive integer, "
                                   f"but got {epoch_length}.")
        for name in cls._epoch_scaled:
            value = kwargs.get(name)
            if isinstance(value, (list, tuple)):
                kwargs[name] = [v * epoch_length for v in value]
            elif value is not None:
                kwargs[name] = value * epoch_length
        begin = int(begin * epoch_length)
        if end != INF:
            end = int(end * epoch_length)
        return cls(*args, begin=begin, end=end, by_epoch=False, **kwargs)

    # ---- stepping -----------------------------------------------------------------------------
    def step(self):
        """Advance one step (an iteration if ``by_epoch=False``, else an epoch)."""
        if self._global_step == 0:       # the first call after the constructor's
            warn_step_order(self.optimizer)
        self._global_step += 1
        if self.begin <= self._global_step < self.end:
            self.last_step += 1
            self._apply(self.last_step)
        else:       # mmengine records the current values here too (get_last_value)
            self._last_host = self._slot.read()
            extra = self._extra_dict()
            if extra is not None:
                self._last_extra = self._read_extra(extra)

    def _apply(self, t):
        values = self._slot.read()
        changed = self._update(values, t)
        self._last_host = values
        if changed is not False:
            self._slot.write(values)
        extra = self._extra_dict()
        if extra is not None:
            self._part = "extra"
            try:
                x = Scalar(self._read_extra(extra))
                if self._update(x, t) is not False:
                    self._write_extra(extra, x.x)
                self._last_extra = x.x
            finally:
                self._part = None
        if self.verbose:            # as mmengine: every group, at every step in the window
            for i, value in enumerate(self.get_last_value()):
                self.print_value(True, i, value)

    def _update(self, v, t):
        raise NotImplementedError

    def _device_update(self, v, t):
        raise NotImplementedError(f"{type(self).__name__} has no device (graph-mode) form")

    def print_value(self, is_verbose, group, value):
        if is_verbose:
            print(f"Adjusting parameter value of group {group} to {value:.4e}.")

    def get_last_value(self):
        """Values of every group after this scheduler's last step (a list of floats)."""
        values = (self._last_host.tolist() if self._last_host is not None
                  else self._slot.values())
        extra = self._extra_dict()
        if extra is not None:
            values.append(self._last_extra if self._last_extra is not None
                          else self._read_extra(extra))
        return values

    @property
    def _last_value(self):          # mmengine's attribute name
        return self.get_last_value()

    # ---- constants on a device ------------------------------------------------------------------
    def _const(self, name, device, make, dtype=torch.float64):
        """A constant of this schedule on ``device``, made once (graph mode: made before
        capture by ``DeviceSchedule``)."""
        key = (name, torch.device(device), self._part)
        value = self._consts.get(key)
        if value is None and self._part is not None:      # the extra group: a Python float
            value = self._consts[key] = float(make().reshape(-1)[0])
        elif value is None:
            value = self._consts[key] = _engine.upload(make().to(dtype), key[1])   # no sync
        return value

    def _base(self, device):
        return self._const("base", device,
                           lambda: torch.tensor(self._pick(self.base_values),
                                                dtype=torch.float64))

    # ---- state ----------------------------------------------------------------------------------
    def _restored(self):
        """Re-derive what a subclass reads from the optimizer, after load_state_dict."""

    def _config(self):
        return {k: getattr(self, k) for k in
                ("param_name", "begin", "end", "by_epoch", *self._config_keys)}

    def state_dict(self):
        """Every attribute but the optimizer, plus ``_last_value`` and ``values``
        (Note [scheduler state]). Plain containers only (``torch.load(weights_only=True)``)."""
        state = {k: _plain(v) for k, v in vars(self).items() if k != "optimizer"}
        state["_last_value"] = self.get_last_value()
        values = self._slot.values()
        extra = self._extra_dict()
        if extra is not None:
            values.append(self._read_extra(extra))
        state["values"] = values
        return state

    def load_state_dict(self, state_dict, keep_config=False):
        """Restore every saved attribute, as torch and mmengine do, and write the saved values
        back into the optimizer (Note [scheduler state]). Keys that are not attributes of this
        scheduler (mmengine's ``anneal_func``, ``_schedule_phases``...) are ignored.

        ``keep_config=True`` restores the progress only (counters, base values, the values):
        the schedule stays the one this object was built with and continues from the saved
        point. Either way a ``UserWarning`` lists the schedule arguments that differ.
        """
        now = self._config()
        changed = {k: (state_dict[k], v) for k, v in now.items()
                   if k in state_dict and _comparable(state_dict[k]) != _comparable(v)}
        if changed and keep_config:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            warnings.warn(f"{type(self).__name__}: the schedule changed since the checkpoint "
                          f"({diff}); keep_config=True: resuming at last_step="
                          f"{state_dict.get('last_step')} with the built schedule from the "
                          "saved values", UserWarning, stacklevel=2)
        elif changed:
            diff = ", ".join(f"{k}: {b!r} -> {a!r}" for k, (a, b) in changed.items())
            warnings.warn(f"{type(self).__name__}: the checkpoint's schedule replaces the one this "
                          f"scheduler was built with ({diff}); pass keep_config=True to "
                          "load_state_dict to keep the built one", UserWarning, stacklevel=2)
        keys = (_PROGRESS_KEYS + self._runtime_keys) if keep_config else tuple(vars(self))
        param_name = self.param_name
        for k in keys:
            if k != "optimizer" and k in state_dict:
                value = state_dict[k]
                if isinstance(getattr(self, k, None), Counter):
                    value = Counter(value)
                setattr(self, k, value)
        if self.param_name != param_name:
            self._slot = get_slot(self._opt, self.param_name)
        self._consts.clear()
        self._restored()
        self._last_host = self._last_extra = None
        if "values" in state_dict:
            # the saved values win over whatever the constructor's first step (start_factor,
            # factor...) or a reloaded optimizer state left in the groups
            values = list(state_dict["values"])
            extra = self._extra_dict()
            if extra is not None and len(values) == self._n_main + 1:
                self._write_extra(extra, float(values.pop()))
            self._slot.set_values(values)
        last = state_dict.get("_last_value")
        if last is not None and len(last) >= self._n_main:
            self._last_host = torch.tensor([float(v) for v in last[:self._n_main]],
                                           dtype=torch.float64)
            if len(last) > self._n_main:
                self._last_extra = float(last[self._n_main])


def _plain(value):
    """Counter -> dict (``torch.load(weights_only=True)`` refuses a Counter)."""
    return dict(value) if isinstance(value, Counter) else value


def _comparable(value):
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (tuple, list)):
        return [_comparable(v) for v in value]
    return value
