"""FusedSGD: drop-in torch.optim.SGD with one fused step."""
import math

import torch

from fusedopt import _hparams, functional
from fusedopt._hparams import Column
from fusedopt.optimizer import FusedOptimizer, host_number

__all__ = ["FusedSGD"]


class FusedSGD(FusedOptimizer, torch.optim.SGD):
    """torch.optim.SGD's arguments and defaults, plus ``backend``, ``skip_nonfinite`` and
    ``master_weights`` (see FusedAdam). State is torch's: ``momentum_buffer`` for groups with
    momentum != 0, nothing otherwise (and ``master_param`` with master weights)."""

    _COLUMNS = {
        _hparams.LR: Column("lr"),
        _hparams.WEIGHT_DECAY: Column("weight_decay"),
        _hparams.MOMENTUM: Column("momentum", zero_flag=True),   # momentum != 0 keeps buffers
        _hparams.DAMPENING: Column("dampening", low=-math.inf),
    }
    _FLAG_KEYS = ("nesterov", "maximize", "master_weights")
    _HPARAM_SLOTS = {
        "lr": (_hparams.LR, "lr", None),
        "weight_decay": (_hparams.WEIGHT_DECAY, "weight_decay", None),
        "momentum": (_hparams.MOMENTUM, "momentum", None),
        "dampening": (_hparams.DAMPENING, "dampening", None),
    }

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None, backend="auto",
                 skip_nonfinite=False, master_weights=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused, skip_nonfinite=skip_nonfinite,
                        master_weights=master_weights)
        self._check_group(defaults)
        # As torch, only the defaults: a group may set nesterov=True beside an inherited
        # dampening, and then steps with both (torch's for-loop math does).
        if nesterov and (host_number(momentum) <= 0 or host_number(dampening) != 0):
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires a momentum and "
                             f"zero dampening; got momentum={momentum}, dampening={dampening}")
        # Note [SGD seeding]: torch seeds a momentum buffer with the first grad (no dampening).
        # The kernels need to know which buffers are seeded; the per-param counter lives here,
        # outside torch's state layout, and is rebuilt from 'momentum_buffer' after a load.
        self._seeded = {}
        super().__init__(params, defaults, backend)

    def _check_column(self, column, values):
        # set_hparam only, fusedopt's own call: a dict write or a scheduler may leave a nesterov
        # group without momentum or with dampening, as torch allows (it checks its defaults
        # only); set_hparam refuses the value that would silently change what nesterov does
        if column not in (_hparams.MOMENTUM, _hparams.DAMPENING):
            return
        bad = values <= 0 if column == _hparams.MOMENTUM else values != 0
        if not bool(bad.any()):
            return
        for row, group in enumerate(self.param_groups):
            if group["nesterov"] and bad[row]:
                raise ValueError(f"set_hparam: param_groups[{row}] has nesterov=True, which "
                                 "requires momentum > 0 and dampening == 0; got "
                                 f"{values[row].item()!r}")

    @staticmethod
    def _flags(group):
        return (("momentum", group["momentum"] != 0), ("nesterov", bool(group["nesterov"])),
                ("maximize", bool(group["maximize"])),
                ("master_weights", bool(group.get("master_weights"))))

    def _counter(self, p, seeded):
        if not hasattr(self, "_seeded"):        # after unpickling
            self._seeded = {}
        counter = self._seeded.get(p)
        if counter is None:
            counter = torch.full((), float(seeded), dtype=torch.float32, device=p.device)
            self._seeded[p] = counter
        return counter

    def _state_of(self, p, group):
        state = self.state.get(p)
        if group["momentum"] == 0:
            # no state in torch's layout; the counter marks the param as initialised
            counter = getattr(self, "_seeded", {}).get(p)
            return None if counter is None else (self._master_states(p, group), counter)
        if not state or state.get("momentum_buffer") is None:
            return None
        return ([state["momentum_buffer"]] + self._master_states(p, group),
                self._counter(p, seeded=True))

    def _new_state(self, p, group):
        # a fresh counter: one kept from momentum-free steps would mark the new buffer seeded
        self._seeded.pop(p, None)
        self._counter(p, seeded=False)
        if group["momentum"] != 0:
            self.state[p]["momentum_buffer"] = torch.zeros_like(
                p, memory_format=torch.preserve_format)

    def __setstate__(self, state):
        self._seeded = {}
        super().__setstate__(state)

    @staticmethod
    def _kernel(bucket, hp, **scalars):
        functional.sgd(bucket, hp, **bucket.kwargs, **scalars)
