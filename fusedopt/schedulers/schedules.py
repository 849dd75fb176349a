"""The schedules: mmengine's parameter schedulers, their chainable forms written as whole-vector
updates (host: Python scalars, device: tensor math from a step counter), and the *LR and
*Momentum twins.

Every host update below evaluates mmengine's expression with the same float64 operations in
the same order (``r * (v - m) + m`` is computed as ``(v - m) * r + m``: the same IEEE result),
so values match mmengine's bit for bit. The device forms compute the scalars with torch ops
(``torch.cos``, ``torch.pow`` may differ from ``math`` by an ulp) and select branches with
``torch.where``: no ``.item()``, no host sync, capturable in a CUDA graph.
"""
import math
from collections import Counter

import torch

from fusedopt.config.errors import ConfigValueError
from fusedopt.schedulers._slot import raw_optimizer
from fusedopt.schedulers.base import INF, ParamScheduler, Scalar

_GENERIC = ["ConstantParamScheduler", "LinearParamScheduler", "StepParamScheduler",
            "MultiStepParamScheduler", "ExponentialParamScheduler",
            "CosineAnnealingParamScheduler", "PolyParamScheduler", "OneCycleParamScheduler",
            "CosineRestartParamScheduler", "ReduceOnPlateauParamScheduler"]
_LR = ["ConstantLR", "LinearLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
       "PolyLR", "OneCycleLR", "CosineRestartLR", "ReduceOnPlateauLR"]
_MOMENTUM = ["ConstantMomentum", "LinearMomentum", "StepMomentum", "MultiStepMomentum",
             "ExponentialMomentum", "CosineAnnealingMomentum", "PolyMomentum",
             "CosineRestartMomentum", "ReduceOnPlateauMomentum"]
__all__ = _GENERIC + _LR + _MOMENTUM


def _f64(t):
    return t.to(torch.float64)


def _anneal_to(v, m, r):
    """v = (v - m) * r + m in place: mmengine's ``r * (v - m) + m``, bit for bit. With m == 0
    (the default eta_min) that is one multiplication."""
    if not torch.is_tensor(m) and m == 0:
        v.mul_(r)
    else:
        v.sub_(m).mul_(r).add_(m)


def _where(cond, a, b):
    """torch.where in float64 (Python numbers become float64 fills on cond's device: a fill is
    a kernel, not a host-to-device copy, so it is capturable)."""
    if not torch.is_tensor(a):
        a = torch.full((), a, dtype=torch.float64, device=cond.device)
    if not torch.is_tensor(b):
        b = torch.full((), b, dtype=torch.float64, device=cond.device)
    return torch.where(cond, a, b)


class ConstantParamScheduler(ParamScheduler):
    """Multiplies by ``factor`` at ``begin`` and restores at ``end - 1``."""
    _config_keys = ("factor",)

    def __init__(self, optimizer, param_name, factor=1.0 / 3, begin=0, end=INF, last_step=-1,
                 by_epoch=True, verbose=False):
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor should between 0 and 1.")
        self.factor = factor
        self.total_iters = end - begin - 1
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        if t == 0:
            v.mul_(self.factor)
        elif t == self.total_iters:
            v.mul_(1.0 / self.factor)
        else:
            return False

    def _device_update(self, v, t):
        inv = 1.0 / self.factor if self.factor else math.inf
        a = _where(t == 0, self.factor, _where(t == self.total_iters, inv, 1.0))
        return v * a.to(v)


class LinearParamScheduler(ParamScheduler):
    """Multiplies by ``start_factor`` at ``begin`` and moves the factor linearly to
    ``end_factor`` at ``end - 1``."""
    _config_keys = ("start_factor", "end_factor")

    def __init__(self, optimizer, param_name, start_factor=1.0 / 3, end_factor=1.0, begin=0,
                 end=INF, last_step=-1, by_epoch=True, verbose=False):
        if start_factor > 1.0 or start_factor < 0:
            raise ValueError(f"Invalid start_factor: {start_factor!r}; the starting multiplicative "
                             "factor should be in [0, 1]")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"Invalid end_factor: {end_factor!r}; the ending multiplicative factor "
                             "should be in [0, 1]")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = end - begin - 1
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        if t == 0:
            v.mul_(self.start_factor)
            return
        sf, ef = self.start_factor, self.end_factor
        v.mul_(1. + (ef - sf) / (self.total_iters * sf + (t - 1) * (ef - sf)))

    def _device_update(self, v, t):
        sf, ef = self.start_factor, self.end_factor
        tf = _f64(t)
        a = 1. + (ef - sf) / (self.total_iters * sf + (tf - 1) * (ef - sf))
        return v * _where(t == 0, torch.full_like(a, sf), a).to(v)


class StepParamScheduler(ParamScheduler):
    """Multiplies by ``gamma`` every ``step_size`` steps."""
    _config_keys = ("step_size", "gamma")
    _epoch_scaled = ("step_size",)

    def __init__(self, optimizer, param_name, step_size, gamma=0.1, begin=0, end=INF,
                 last_step=-1, by_epoch=True, verbose=False):
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        if t == 0 or t % self.step_size != 0:
            return False
        v.mul_(self.gamma)

    def _device_update(self, v, t):
        hit = (t != 0) & (torch.remainder(t, self.step_size) == 0)
        return v * _where(hit, self.gamma, 1.0).to(v)


class MultiStepParamScheduler(ParamScheduler):
    """Multiplies by ``gamma`` (``gamma**k`` for a milestone listed k times) at each milestone."""
    _config_keys = ("milestones", "gamma")
    _epoch_scaled = ("milestones",)

    def __init__(self, optimizer, param_name, milestones, gamma=0.1, last_step=-1, begin=0,
                 end=INF, by_epoch=True, verbose=False):
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        count = self.milestones.get(t)
        if not count:
            return False
        v.mul_(self.gamma ** count)

    def _device_update(self, v, t):
        if not self.milestones:
            return v
        steps = self._const("milestones", t.device, lambda: torch.tensor(list(self.milestones)),
                            torch.int64)
        factors = self._const("milestone_factors", t.device, lambda: torch.tensor(
            [self.gamma ** c for c in self.milestones.values()], dtype=torch.float64))
        a = _where(steps == t, factors, torch.ones_like(factors)).prod()
        return v * a.to(v)


class ExponentialParamScheduler(ParamScheduler):
    """Multiplies by ``gamma`` every step."""
    _config_keys = ("gamma",)

    def __init__(self, optimizer, param_name, gamma, begin=0, end=INF, last_step=-1,
                 by_epoch=True, verbose=False):
        self.gamma = gamma
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        if t == 0:
            return False
        v.mul_(self.gamma)

    def _device_update(self, v, t):
        return v * _where(t == 0, 1.0, self.gamma).to(v)


class _EtaMin:
    """``eta_min`` (a number) or ``eta_min_ratio`` (times each group's base value)."""

    def _eta_min(self, device):
        if self.eta_min_ratio is None:
            return self.eta_min
        return self._const("eta_min", device, lambda: torch.tensor(
            [b * self.eta_min_ratio for b in self._pick(self.base_values)],
            dtype=torch.float64))


class CosineAnnealingParamScheduler(_EtaMin, ParamScheduler):
    """Cosine annealing from the base value to ``eta_min`` over ``T_max`` steps (chainable
    form: continues as a cosine with period 2*T_max after T_max)."""
    _config_keys = ("T_max", "eta_min", "eta_min_ratio")
    _epoch_scaled = ("T_max",)

    def __init__(self, optimizer, param_name, T_max=None, eta_min=None, begin=0, end=INF,
                 last_step=-1, by_epoch=True, verbose=False, eta_min_ratio=None):
        if eta_min is None and eta_min_ratio is None:
            eta_min = 0.
        if not ((eta_min is None) ^ (eta_min_ratio is None)):
            raise ConfigValueError("Either eta_min or eta_min_ratio should be specified, not both "
                                   f"(eta_min={eta_min!r}, eta_min_ratio={eta_min_ratio!r})")
        self.T_max = T_max or (end - begin)
        self.eta_min = eta_min
        self.eta_min_ratio = eta_min_ratio
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _restart_bump(self, device):
        # (base - eta_min) * (1 - cos(pi / T)) / 2, in mmengine's order
        s = 1 - math.cos(math.pi / self.T_max)

        def make():
            base = torch.tensor(self._pick(self.base_values), dtype=torch.float64)
            m = self.eta_min if self.eta_min_ratio is None else base * self.eta_min_ratio
            return (base - m) * s / 2
        return self._const("bump", device, make)

    def _update(self, v, t):
        T = self.T_max
        if t == 0:
            return False
        if (t - 1 - T) % (2 * T) == 0:
            v.add_(self._restart_bump(v.device))
            return
        m = self._eta_min(v.device)
        r = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        _anneal_to(v, m, r)

    def _device_update(self, v, t):
        T = self.T_max
        tf = _f64(t)
        m = self._eta_min(v.device)
        r = (1 + torch.cos(math.pi * tf / T)) / (1 + torch.cos(math.pi * (tf - 1) / T))
        annealed = (v - m) * r.to(v) + m
        bumped = v + self._restart_bump(v.device)
        restart = torch.remainder(t - 1 - T, 2 * T) == 0
        return _where(t == 0, v, _where(restart, bumped, annealed))


class PolyParamScheduler(ParamScheduler):
    """Polynomial decay to ``eta_min`` at ``end - 1``."""
    _config_keys = ("eta_min", "power")

    def __init__(self, optimizer, param_name, eta_min=0, power=1.0, begin=0, end=INF,
                 last_step=-1, by_epoch=True, verbose=False):
        self.eta_min = eta_min
        self.power = power
        self.total_iters = end - begin - 1
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _update(self, v, t):
        if t == 0:
            return False
        a = (1 - 1 / (self.total_iters - t + 1)) ** self.power
        _anneal_to(v, self.eta_min, a)

    def _device_update(self, v, t):
        tf = _f64(t)
        a = torch.pow(1 - 1 / (self.total_iters - tf + 1), self.power)
        new = (v - self.eta_min) * a.to(v) + self.eta_min
        return _where(t == 0, v, new)


class OneCycleParamScheduler(ParamScheduler):
    """The 1cycle policy (not chainable: sets the value from the step alone)."""
    __slots__ = ("_ends",)      # read from the groups (initial_lr, max_lr, min_lr), not state
    _config_keys = ("eta_max", "total_steps", "pct_start", "anneal_strategy", "div_factor",
                    "final_div_factor", "three_phase")
    _epoch_scaled = ("total_steps",)

    def __init__(self, optimizer, param_name, eta_max=0, total_steps=None, pct_start=0.3,
                 anneal_strategy="cos", div_factor=25., final_div_factor=1e4, three_phase=False,
                 begin=0, end=INF, last_step=-1, by_epoch=True, verbose=False):
        if param_name != "lr":
            raise ConfigValueError("OneCycle only works for learning rate updating, but got "
                                   f"param_name as {param_name}")
        self.eta_max = eta_max
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        else:
            self.total_steps = end - begin
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError('anneal_strategy must by one of "cos" or "linear", instead got '
                             f"{anneal_strategy}")
        self.pct_start = pct_start
        self.anneal_strategy = anneal_strategy
        self.three_phase = three_phase
        n = self.total_steps
        if three_phase:
            self._phases = [(float(pct_start * n) - 1, "initial", "max"),
                            (float(2 * pct_start * n) - 2, "max", "initial"),
                            (n - 1, "initial", "min")]
        else:
            self._phases = [(float(pct_start * n) - 1, "initial", "max"),
                            (n - 1, "max", "min")]
        opt = raw_optimizer(optimizer)
        groups = list(opt.param_groups)
        extra = getattr(optimizer, "base_param_settings", None) if opt is not optimizer else None
        if isinstance(extra, dict):
            groups.append(extra)          # mmengine schedules the wrapper's dummy group too
        if isinstance(eta_max, (list, tuple)):
            if len(eta_max) != len(groups):
                raise ValueError(f"expected {len(groups)} values for max_{param_name}, "
                                 f"got {len(eta_max)}")
            max_values = list(eta_max)
        else:
            max_values = [eta_max] * len(groups)
        if last_step == -1:
            for idx, group in enumerate(groups):
                group[f"initial_{param_name}"] = max_values[idx] / div_factor
                group[f"max_{param_name}"] = max_values[idx]
                group[f"min_{param_name}"] = group[f"initial_{param_name}"] / final_div_factor
        self._read_ends(groups, param_name)
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    def _read_ends(self, groups, param_name):
        """The curve's end points, from the groups as torch and mmengine read them; here at
        construction and after load_state_dict (not at every step: O(1) steps)."""
        self._ends = {which: [g[f"{which}_{param_name}"] for g in groups]
                      for which in ("initial", "max", "min")}

    def _restored(self):
        self._read_ends(self._all_groups(self._opt), self.param_name)

    def _vec(self, which, device):
        return self._const(which, device,
                           lambda: torch.tensor(self._pick(self._ends[which]),
                                                dtype=torch.float64))

    def _anneal(self, start, end, pct, lib):
        if self.anneal_strategy == "cos":
            cos_out = lib.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def _update(self, v, t):
        if t > self.total_steps:
            raise ValueError(f"Tried to step {t + 1} times. The specified number of total "
                             f"steps is {self.total_steps}")
        start_step = 0
        for i, (end_step, a, b) in enumerate(self._phases):
            if t <= end_step or i == len(self._phases) - 1:
                pct = (t - start_step) / (end_step - start_step)
                v.copy_(self._anneal(self._vec(a, v.device), self._vec(b, v.device), pct, math))
                return
            start_step = end_step

    def _device_update(self, v, t):
        tf = _f64(t)
        out = None
        starts = [0] + [p[0] for p in self._phases[:-1]]
        for i in reversed(range(len(self._phases))):
            end_step, a, b = self._phases[i]
            pct = (tf - starts[i]) / (end_step - starts[i])
            val = self._anneal(self._vec(a, v.device), self._vec(b, v.device), pct.to(v), torch)
            out = val if out is None else _where(tf <= end_step, val, out)
        return _where(t > self.total_steps, v, out)


class CosineRestartParamScheduler(_EtaMin, ParamScheduler):
    """Cosine annealing with restarts: period i lasts ``periods[i]`` steps and restarts at
    ``base * restart_weights[i]``."""
    _config_keys = ("periods", "restart_weights", "eta_min", "eta_min_ratio")
    _epoch_scaled = ("periods",)

    def __init__(self, optimizer, param_name, periods, restart_weights=(1,), eta_min=None,
                 eta_min_ratio=None, begin=0, end=INF, last_step=-1, by_epoch=True,
                 verbose=False):
        if not ((eta_min is None) ^ (eta_min_ratio is None)):
            raise ConfigValueError("Either eta_min or eta_min_ratio should be specified, not both "
                                   f"(eta_min={eta_min!r}, eta_min_ratio={eta_min_ratio!r})")
        self.periods = periods
        self.eta_min = eta_min
        self.eta_min_ratio = eta_min_ratio
        self.restart_weights = restart_weights
        if len(self.periods) != len(self.restart_weights):
            raise ConfigValueError("periods and restart_weights should have the same length.")
        self.cumulative_periods = [sum(self.periods[0:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)

    @staticmethod
    def get_position_from_periods(iteration, cumulative_periods):
        for i, period in enumerate(cumulative_periods):
            if iteration < period:
                return i
        return None

    def _update(self, v, t):
        idx = self.get_position_from_periods(t, self.cumulative_periods)
        if idx is None:
            return False
        weight = self.restart_weights[idx]
        nearest_restart = 0 if idx == 0 else self.cumulative_periods[idx - 1]
        period = self.periods[idx]
        step = t - nearest_restart
        if step == 0:
            v.copy_(self._base(v.device) * weight)
            return
        m = self._eta_min(v.device)
        r = (1 + math.cos(math.pi * step / period)) / (1 + math.cos(math.pi * (step - 1) / period))
        _anneal_to(v, m, r)

    def _device_update(self, v, t):
        dev = t.device
        cum = self._const("cum", dev, lambda: torch.tensor(self.cumulative_periods), torch.int64)
        prev = self._const("prev", dev, lambda: torch.tensor(
            [0] + self.cumulative_periods[:-1], dtype=torch.float64))
        periods = self._const("periods", dev, lambda: torch.tensor(self.periods,
                                                                   dtype=torch.float64))
        weights = self._const("weights", dev, lambda: torch.tensor(
            [float(w) for w in self.restart_weights], dtype=torch.float64))
        idx = torch.searchsorted(cum, t.reshape(1), right=True).reshape(())
        valid = idx < len(self.periods)
        i = idx.clamp(max=len(self.periods) - 1).reshape(1)
        # gather, not prev[i]: indexing with a 0-d tensor reads it back to the host
        step = _f64(t) - prev.gather(0, i).reshape(())
        period = periods.gather(0, i).reshape(())
        m = self._eta_min(v.device)
        r = ((1 + torch.cos(math.pi * step / period))
             / (1 + torch.cos(math.pi * (step - 1) / period)))
        annealed = (v - m) * r.to(v) + m
        restarted = self._base(v.device) * weights.gather(0, i).to(v)
        return _where(valid, _where(step == 0, restarted, annealed), v)


class ReduceOnPlateauParamScheduler(ParamScheduler):
    """Multiplies by ``factor`` (not below ``min_value``) when the monitored metric stopped
    improving for ``patience`` validation steps. ``step()`` counts; ``step(metrics)`` decides."""
    need_val_args = True
    _config_keys = ("monitor", "rule", "factor", "patience", "threshold", "threshold_rule",
                    "cooldown", "min_values", "eps")
    _runtime_keys = ("best", "num_bad_epochs", "cooldown_counter")

    def __init__(self, optimizer, param_name, monitor="loss", rule="less", factor=0.1,
                 patience=10, threshold=1e-4, threshold_rule="rel", cooldown=0, min_value=0.,
                 eps=1e-8, begin=0, end=INF, last_step=-1, by_epoch=True, verbose=False):
        if not by_epoch:
            raise ConfigValueError(f"Now {type(self).__name__} only support by_epoch=True")
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        opt = raw_optimizer(optimizer)
        if isinstance(min_value, (list, tuple)):
            if len(min_value) != len(opt.param_groups):
                raise ValueError(f"expected {len(opt.param_groups)} min_lrs, "
                                 f"got {len(min_value)}")
            self.min_values = list(min_value)
            if opt is not optimizer and getattr(optimizer, "base_param_settings", None) is not None:
                self.min_values.append(self.min_values[-1])
        else:
            extra = (getattr(optimizer, "base_param_settings", None)
                     if opt is not optimizer else None)
            self.min_values = [min_value] * (len(opt.param_groups) + isinstance(extra, dict))
        self.patience = patience
        self.cooldown = cooldown
        self.cooldown_counter = 0
        self.eps = eps
        self.monitor = monitor
        if threshold < 0:
            raise ValueError(f"threshold {threshold} should be >= 0.")
        if rule not in {"less", "greater"}:
            raise ValueError(f"Invalid rule: {rule!r}; expected 'less' or 'greater'")
        if threshold_rule not in {"rel", "abs"}:
            raise ValueError(f"Invalid threshold_rule: {threshold_rule!r}; expected 'rel' or 'abs'")
        self.rule = rule
        self.threshold = threshold
        self.threshold_rule = threshold_rule
        self.rule_worse = INF if rule == "less" else -INF
        self.best = self.rule_worse
        self.num_bad_epochs = 0
        super().__init__(optimizer, param_name, begin, end, last_step, by_epoch, verbose)
        self._global_step = 0
        self._record_last()

    def _record_last(self):
        # mmengine: the values at construction and after every step(metrics)
        self._last_host = self._slot.read()
        extra = self._extra_dict()
        self._last_extra = self._read_extra(extra) if extra is not None else None

    def _init_step(self):
        pass                 # mmengine: no step in the constructor, _global_step starts at 0

    def _is_better(self, a, best):
        if self.rule == "less" and self.threshold_rule == "rel":
            return a < best * (1. - self.threshold)
        if self.rule == "less":
            return a < best - self.threshold
        if self.threshold_rule == "rel":
            return a > best * (self.threshold + 1.)
        return a > best + self.threshold

    def step(self, metrics=None):
        if metrics is None:
            self._global_step += 1       # only counts
            return
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics type should be dict, but got type {type(metrics)}")
        if self.begin <= self._global_step < self.end:
            self.last_step += 1
            metric = metrics.get(self.monitor, None)
            if metric is None:
                raise KeyError(f"Excepted key in {list(metrics.keys())}, but got key "
                               f"{self.monitor} is not in dict")
            if self._is_better(metric, self.best):
                self.best = metric
                self.num_bad_epochs = 0
            else:
                self.num_bad_epochs += 1
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
                self.num_bad_epochs = 0
            if self.num_bad_epochs > self.patience:
                self._apply(self.last_step)
                self.cooldown_counter = self.cooldown
                self.num_bad_epochs = 0
        self._record_last()

    def _update(self, v, t):
        if isinstance(v, Scalar):
            new = max(float(v.x) * self.factor, self._pick(self.min_values)[0])
            if v.x - new > self.eps:
                v.x = new
            return
        min_v = self._const("min", v.device, lambda: torch.tensor(
            [float(x) for x in self._pick(self.min_values)], dtype=torch.float64))
        new = torch.maximum(v * self.factor, min_v)
        v.copy_(torch.where(v - new > self.eps, new, v))


def _twin(base, param_name, name, doc):
    """``base`` with ``param_name`` fixed: the *LR and *Momentum classes."""

    def __init__(self, optimizer, *args, **kwargs):
        if param_name == "momentum":
            opt = raw_optimizer(optimizer)
            defaults = getattr(opt, "defaults", {})
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("optimizer must support momentum when using momentum scheduler")
            if "momentum" not in defaults:
                # the Adam family: mmengine keeps group['momentum'] == betas[0] in every group
                # (the wrapper's base_param_settings too); the Slot keeps it so after each write
                extra = (getattr(optimizer, "base_param_settings", None)
                         if opt is not optimizer else None)
                for group in list(opt.param_groups) + ([extra] if isinstance(extra, dict) else []):
                    group["momentum"] = group["betas"][0]
        base.__init__(self, optimizer, param_name, *args, **kwargs)

    return type(name, (base,), {"__init__": __init__, "__doc__": doc,
                                "__module__": __name__, "__qualname__": name})


for _generic, _lr in zip(_GENERIC, _LR):
    globals()[_lr] = _twin(globals()[_generic], "lr", _lr,
                           f"{_generic} on the learning rate (mmengine's {_lr}).")
for _mom in _MOMENTUM:
    _generic = _mom.replace("Momentum", "ParamScheduler")
    globals()[_mom] = _twin(globals()[_generic], "momentum", _mom,
                            f"{_generic} on the momentum (``betas[0]`` on the Adam family; "
                            f"mmengine's {_mom}).")
del _generic, _lr, _mom
