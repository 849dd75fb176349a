"""Where a scheduled hyper-parameter lives, and how a scheduler step writes it.

Note [scheduler writes]: every fusedopt scheduler of one optimizer that schedules the same
hyper-parameter (``lr``, ``momentum``, ...) shares one ``Slot``. A scheduler step is an update
of the whole value vector (one entry per param group) written as a few tensor operations:

* On a fusedopt optimizer the current values are read from the device hyper-parameter table
  (Note [lr lives on the device]: the table is the truth; a float written into a param_group
  by someone else has already been copied into it by ``hparam_tables``), updated with O(1)
  tensor ops and written back with ``set_hparam(name, tensor)``: one copy per device, no host
  sync, whatever the number of groups.
* The param_group dicts are refreshed *lazily* on fusedopt optimizers: the optimizer's
  ``param_groups`` list is replaced once by a ``LazyGroups`` list that writes the pending host
  values into the dicts the next time anyone iterates or indexes it (``opt.param_groups[0]['lr']``,
  ``for g in opt.param_groups``, ``state_dict()``...). So ``param_group['lr']`` reads the
  current value, and a step that nobody reads costs no Python work per group. The host values
  are a CPU float64 mirror updated with the same IEEE operations as the device copy (on CPU
  devices they are the same tensor), so reading them never syncs with the device.
  A reference to a group dict kept from *before* the step (``g = opt.param_groups[0]`` then
  ``g['lr']`` after later steps) may show an older value; index the list again.
* On other optimizers (torch.optim.*, custom) the values are read from the dicts, updated with
  the same tensor ops on the host, and written back into the dicts at once (eager).

All arithmetic is float64 in the operation order of mmengine's chainable forms, so the values
equal mmengine's bit for bit (the device path adds nothing but IEEE float64 +, -, *, /).
"""
from collections import deque
from itertools import repeat
from operator import is_, itemgetter, setitem

import torch

try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is optional for torch
    _np = None

__all__ = ["Slot", "LazyGroups", "raw_optimizer", "NumpyView"]


class NumpyView:
    """A CPU float64 tensor updated through numpy: the same IEEE float64 operations as torch's
    in-place ops (so the same bits), at about half the per-call overhead. ``_update`` code sees
    ``mul_``/``sub_``/``add_``/``copy_`` as on a tensor; ``.t`` is the tensor."""
    __slots__ = ("t", "a")
    device = torch.device("cpu")

    def __init__(self, t):
        self.t = t
        self.a = t.numpy()

    @staticmethod
    def _arg(x):
        return x.numpy() if torch.is_tensor(x) else x

    def mul_(self, x):
        _np.multiply(self.a, self._arg(x), out=self.a)
        return self

    def sub_(self, x):
        _np.subtract(self.a, self._arg(x), out=self.a)
        return self

    def add_(self, x):
        _np.add(self.a, self._arg(x), out=self.a)
        return self

    def copy_(self, x):
        self.t.copy_(x)
        return self

    def __len__(self):
        return len(self.t)


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


class LazyGroups(list):
    """``optimizer.param_groups`` of a fusedopt optimizer under fusedopt schedulers: writes the
    pending scheduled values into the group dicts before anyone looks at them."""
    __slots__ = ("pending",)

    def __init__(self, groups):
        super().__init__(groups)
        self.pending = {}            # slot name -> Slot with host values not yet in the dicts

    def materialize(self):
        pending = self.pending
        if pending:
            slots = list(pending.values())
            pending.clear()
            for slot in slots:
                slot.write_dicts(list.__iter__(self))

    def __iter__(self):
        if self.pending:
            self.materialize()
        return list.__iter__(self)

    def __getitem__(self, index):
        if self.pending:
            self.materialize()
        return list.__getitem__(self, index)

    def __eq__(self, other):
        self.materialize()
        return list.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None

    def __contains__(self, item):
        self.materialize()
        return list.__contains__(self, item)

    def index(self, *args):
        self.materialize()
        return list.index(self, *args)

    def count(self, item):
        self.materialize()
        return list.count(self, item)

    def __reversed__(self):
        self.materialize()
        return list.__reversed__(self)

    def copy(self):
        self.materialize()
        return list(list.__iter__(self))

    def __reduce_ex__(self, protocol):   # pickle/deepcopy as a plain, up-to-date list
        self.materialize()
        return (list, (list(list.__iter__(self)),))

    def __repr__(self):
        self.materialize()
        return list.__repr__(self)


def _replace(pair, index, value):
    out = list(pair)
    out[index] = value
    return out if isinstance(pair, list) else tuple(out)


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
        self.host = None          # CPU float64 [G]: the values the dicts should show
        self.devs = []            # the same values on the other devices of the optimizer
        self.tables_seen = None   # the optimizer's tables dict the vectors belong to
        self.direct = True        # vectors are views of float64 tables: updated in place
        self.owner = None         # scheduler whose last values are the live vectors
        self.host_np = None       # NumpyView of ``host`` when it is a CPU table column
        self.written = None       # the objects the last lazy write put into the dicts

    # ---- group dicts ------------------------------------------------------------------------
    def groups(self):
        """The group dicts, without materializing pending values (callers overwrite them)."""
        groups = self.optimizer.param_groups
        return list.__iter__(groups) if isinstance(groups, LazyGroups) else groups

    def read_dicts(self):
        key, index = self.key, self.index
        if index is None:
            vals = list(map(itemgetter(key), self.groups()))
        else:
            vals = [g[key][index] for g in self.groups()]
        try:
            if _np is not None:
                return torch.from_numpy(_np.array(vals, dtype=_np.float64))
            return torch.tensor(vals, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):     # tensor-valued entries
            return torch.tensor([float(v) for v in vals], dtype=torch.float64)

    def write_dicts(self, groups):
        """Write the host values into the dicts (C loops). A dict entry written by someone else
        since our last write (through a dict reference kept from before) keeps its value: the
        write marked the tables stale, so the table follows it on the next step."""
        key, index = self.key, self.index
        groups = list(groups)
        values = self.host.tolist()
        current = list(map(itemgetter(key), groups))
        if index is not None:
            values = [_replace(c, index, v) for c, v in zip(current, values)]
        written = self.written
        if (written is not None and len(written) == len(current)
                and not all(map(is_, current, written))):
            values = [v if c is w else c for c, w, v in zip(current, written, values)]
        deque(map(dict.__setitem__, groups, repeat(key), values), maxlen=0)
        if self.mirror is not None:
            mirrored = map(itemgetter(index), values)
            deque(map(dict.__setitem__, groups, repeat(self.mirror), mirrored), maxlen=0)
        self.written = values

    def _lazy_groups(self):
        opt = self.optimizer
        groups = opt.param_groups
        if not isinstance(groups, LazyGroups):
            groups = LazyGroups(groups)
            opt.param_groups = groups
        return groups

    # ---- values -------------------------------------------------------------------------------
    def values(self):
        """Current values as a list of floats (host; never syncs)."""
        if self.fused:
            return self.current()[1].tolist()
        return self.read_dicts().tolist()

    def current(self):
        """(device vectors, host vector) holding the current values, to update in place.

        fusedopt, float64 tables: the vectors are *views* of the table columns, so updating them
        in place is the device write (O(1) ops, no copy); on a CPU device the host vector is
        that view too. On other devices the host vector is a CPU mirror, reloaded from the dicts
        whenever the tables were rebuilt (someone wrote a group dict). Tables of another dtype
        are written through ``set_hparam`` (``self.direct`` is False). Other optimizers: the host
        vector is read from the dicts.
        """
        if not self.fused:
            self.host = self.read_dicts()
            self.host_np = NumpyView(self.host) if _np is not None else None
            return [], self.host
        opt = self.optimizer
        tables = opt.hparam_tables
        if tables is not self.tables_seen:
            self._attach(tables)
        return self.devs, self.host

    def _attach(self, tables):
        opt = self.optimizer
        views = [t[:, self.column] for t in tables.values()]
        self.direct = all(v.dtype == torch.float64 for v in views)
        if not self.direct:
            views = [v.clone() for v in views]
        cpu = [v for v in views if v.device.type == "cpu"]
        self.host_np = None
        if cpu:
            self.host = cpu[0]
            self.devs = [v for v in views if v is not cpu[0]]
            if _np is not None and self.direct:
                self.host_np = NumpyView(self.host)
        else:
            groups = opt.param_groups
            if isinstance(groups, LazyGroups):
                groups.materialize()
            self.host = self.read_dicts()
            self.devs = views
        self.tables_seen = tables
        # the dicts are current here (a rebuild read them): remember what they hold
        self.written = list(map(itemgetter(self.key), self.groups()))

    def claim(self, scheduler):
        """``scheduler`` is about to update the live vectors: a scheduler that kept them as its
        last values gets a copy first (chains only)."""
        owner = self.owner
        if owner is not None and owner is not scheduler and owner._last_host is self.host:
            owner._last_host = self.host.clone()
        self.owner = scheduler

    def commit(self, devs, host):
        """Publish the updated vectors: device tables (fused), then the dicts (lazy or eager)."""
        self.host = host
        if not self.fused:
            key, index = self.key, self.index
            if index is None:    # the groups' own __setitem__, in a C loop
                deque(map(setitem, self.groups(), repeat(key), host.tolist()), maxlen=0)
                return
            for g, v in zip(self.groups(), host.tolist()):
                pair = list(g[key])
                pair[index] = v
                g[key] = tuple(pair)
                if self.mirror is not None:
                    g[self.mirror] = v
            return
        opt = self.optimizer
        if not self.direct:
            opt.set_hparam(self.name, devs[0] if devs else host)
            self.tables_seen = opt.hparam_tables
        groups = opt.param_groups
        if type(groups) is not LazyGroups:
            groups = self._lazy_groups()
        groups.pending[self.name] = self

    def set_values(self, values):
        """Write explicit values (a list of floats) into every group (resume)."""
        host = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if len(host) != len(self.optimizer.param_groups):
            raise ValueError(f"{len(host)} saved values of {self.name!r} for "
                             f"{len(self.optimizer.param_groups)} param groups")
        if self.fused:
            devs, live = self.current()
            for v in devs:
                v.copy_(host, non_blocking=True)
            live.copy_(host)
            self.commit(devs, live)
            self.optimizer.param_groups.materialize()
        else:
            self.commit([], host)
