"""ParamScheduler: the base of every fusedopt scheduler (mmengine's ``_ParamScheduler`` semantics).

Counting (as mmengine): ``_global_step`` counts ``step()`` calls (the constructor makes the
first one); while ``begin <= _global_step < end`` each step advances ``last_step`` (0 at
``begin``) and applies the chainable update of the subclass to the *current* values, so
schedulers on the same hyper-parameter compose in list order, and values stay constant in gaps
between windows. How the update reaches the optimizer: Note [scheduler writes] (_slot.py).

Resume: see the package docstring (fusedopt/schedulers/__init__.py).
"""
import warnings

import torch

from fusedopt import _engine
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
    _runtime_keys = ()           # extra progress attributes saved and restored (ReduceOnPlateau)
    need_val_args = False

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
        if not (isinstance(last_step, int) and last_step >= -1):
            raise ValueError(f"last_step must be an int >= -1, got {last_step!r}")
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
            raise AssertionError("Only epoch-based kwargs whose `by_epoch=True` can be "
                                 "converted to iter-based.")
        if epoch_length is None or epoch_length <= 0:
            raise AssertionError("`epoch_length` must be a positive integer, "
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
            if self.verbose:
                for i, value in enumerate(values.tolist()):
                    self.print_value(True, i, value)
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
    def _config(self):
        return {k: _plain(getattr(self, k)) for k in
                ("param_name", "begin", "end", "by_epoch", *self._config_keys)}

    def state_dict(self):
        """Progress (counters, base values, the current values of the scheduled parameter) and
        the schedule's config (to detect a changed config on resume)."""
        values = self._slot.values()
        extra = self._extra_dict()
        if extra is not None:
            values.append(self._read_extra(extra))
        state = {"last_step": self.last_step, "_global_step": self._global_step,
                 "base_values": list(self.base_values), "values": values,
                 "config": self._config()}
        for k in self._runtime_keys:
            state[k] = getattr(self, k)
        state.update({k: v for k, v in state["config"].items() if k not in state})
        return state

    def load_state_dict(self, state_dict):
        """Restore progress; the schedule itself stays the one this object was built with
        (warns when the saved config differs). See the package docstring."""
        saved = state_dict.get("config")
        if saved is None:     # an mmengine state dict: its attributes are the config
            saved = {k: state_dict[k] for k in self._config() if k in state_dict}
        now = self._config()
        changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            warnings.warn(f"{type(self).__name__}: the schedule changed since the checkpoint "
                          f"({diff}); resuming at last_step={state_dict.get('last_step')} with "
                          "the new schedule from the saved values", UserWarning, stacklevel=2)
        self.last_step = state_dict["last_step"]
        self._global_step = state_dict["_global_step"]
        if "base_values" in state_dict:
            self.base_values = list(state_dict["base_values"])
            self._consts.clear()
        for k in self._runtime_keys:
            if k in state_dict:
                setattr(self, k, state_dict[k])
        if "values" in state_dict:
            # the saved values win over whatever the constructor's first step (start_factor,
            # factor...) or a reloaded optimizer state left in the groups
            values = list(state_dict["values"])
            extra = self._extra_dict()
            if extra is not None and len(values) == self._n_main + 1:
                self._write_extra(extra, float(values.pop()))
            self._slot.set_values(values)
        self._last_host = None


def _plain(value):
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value

