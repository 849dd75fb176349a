"""Where a scheduled hyper-parameter lives, and how a scheduler step writes it.

Note [scheduler writes]: every fusedopt scheduler of one optimizer that schedules the same
hyper-parameter (``lr``, ``momentum``, ...) shares one ``Slot``. A scheduler step reads the
value of every group from the param_group dicts (one C loop, fusedopt._C.read_column), updates
that float64 vector with a few tensor operations and writes it back at once:

* on a fusedopt optimizer as ``set_hparam`` does: the dicts and the hyper-parameter tables
  together, one copy per device (Note [one truth], fusedopt/_hparams.py); a column with a value
  out of range goes into the dicts only, for the step to name (Note [range checks where values
  are used], docs/internals.md);
* on other optimizers (torch.optim.*, custom) into the dicts (one C loop, write_column).

So every way of reading ``param_groups`` (indexing, iteration, a copy, ``list + list`` as
mmengine's OptimWrapper does) shows the values the next step uses, and a value written by
anyone else is the base of the next update, as in mmengine. The dicts were once refreshed
lazily instead (a list subclass in ``param_groups``, only the table written at each step): a
CosineAnnealingLR step over 1000 groups was 183x faster than mmengine's
(bench/results/scheduler_step_cpu.json), but a list concatenation skipped the refresh and
trained with stale lrs, and torch.compile cannot trace a list or dict subclass there. Written
eagerly, the step costs 44 us at 1000 groups, 10x less than mmengine's 441 us (2-core EPYC VM,
bench/scheduler_step.py): ~10 us to read the values, ~21 us to store 1000 new float objects
into the dicts, the rest the table and the update.

All arithmetic is float64 in the operation order of mmengine's chainable forms, so the values
equal mmengine's bit for bit.
"""
import torch

from fusedopt import _hparams

__all__ = ["Slot", "raw_optimizer"]


def raw_optimizer(optimizer):
    """The torch optimizer behind an optimizer or an optim wrapper (anything with ``.optimizer``
    and ``.param_groups``)."""
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and hasattr(inner, "param_groups") and not hasattr(optimizer, "state"):
        return raw_optimizer(inner)
    if not hasattr(optimizer, "param_groups"):
        raise TypeError("``optimizer`` should be an Optimizer or an optim wrapper, but got "
                        f"{type(optimizer).__name__}")
    return optimizer


class Slot:
    """One hyper-parameter of every group of one optimizer (Note [scheduler writes])."""

    def __init__(self, optimizer, name):
        self.optimizer = optimizer
        self.name = name
        defaults = getattr(optimizer, "defaults", {})
        slots = getattr(type(optimizer), "_HPARAM_SLOTS", None)
        self.fused = (slots is not None and name in slots
                      and callable(getattr(optimizer, "set_hparam", None)))
        if self.fused:     # (table column, param_group key, index in a tuple value or None)
            self.column, self.key, self.index = slots[name]
        else:
            self.column = None
            if name in ("momentum", "beta1") and name not in defaults and "betas" in defaults:
                self.key, self.index = "betas", 0      # Adam family: momentum is betas[0]
            elif name == "beta2" and name not in defaults and "betas" in defaults:
                self.key, self.index = "betas", 1
            else:
                self.key, self.index = name, None
        # mmengine's momentum schedulers on the Adam family keep group['momentum'] beside
        # betas[0], and code reads either: every write of betas[0] here writes it too
        self.mirror = "momentum" if name == "momentum" and self.key == "betas" else None

    def read(self):
        """The current values: a new CPU float64 tensor, one entry per group."""
        return _hparams.read_column(self.optimizer.param_groups, self.key, self.index)

    def values(self):
        return self.read().tolist()

    def write(self, values):
        """Write ``values`` (CPU float64, one per group) into every group."""
        groups = self.optimizer.param_groups
        if self.fused:
            self.optimizer._write_hparam(self.name, values)
        else:
            _hparams.write_column(groups, self.key, self.index, values)
        if self.mirror is not None:
            _hparams.write_column(groups, self.mirror, None, values)

    def set_values(self, values):
        """Write explicit values (a list of floats) into every group (resume)."""
        host = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if len(host) != len(self.optimizer.param_groups):
            raise ValueError(f"{len(host)} saved values of {self.name!r} for "
                             f"{len(self.optimizer.param_groups)} param groups")
        self.write(host)

    def device_values(self, device=None):
        """The current values on a device (graph mode): the table column of a fusedopt
        optimizer (its first device), else the dicts' values on ``device`` (default CPU)."""
        if self.fused:
            tables = self.optimizer.hparam_tables
            if tables:
                return next(iter(tables.values()))[:, self.column].clone()
        return self.read().to(device or "cpu")
