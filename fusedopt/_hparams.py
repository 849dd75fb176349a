"""The hyper-parameter tables (columns mirror csrc/hparams.h; keep in step).

Note [lr lives on the device]: every (optimizer, device) pair owns one float64 tensor of shape
[num_groups, NUM_COLS]. Kernels read row ``group_index[t]`` of it, so one launch serves every
group, and a captured CUDA graph reads it at every replay.

Note [one truth]: the param_group dicts are the truth and the tables follow them.
* Stable addresses. A table is allocated when its device first appears and again only when
  the number of groups changes (``add_param_group``); everything else writes it in place, so a
  graph captured before a write reads the new value. A reallocation after a step ran under
  CUDA graph capture raises at the next step (the graph would read the old table), once.
* Written values. A step finds the values written since the last step by identity, skipping
  the groups whose dict did not change (Notes [written groups are found by identity] and [dict
  versions], csrc/param_groups.h): a number in range is written
  into its cell in C++, and all cells written on one step reach each device with one
  host-to-device copy; clean groups are not looked at again, no parameter is scanned and no
  tensor is read back. A row with anything else written (an algorithm flag, a tensor, a value
  out of range, a replaced dict) is re-read and checked in Python, naming the group and key.
* Tensor values (torch accepts ``lr=torch.tensor(...)``, and its schedulers then ``fill_`` it)
  are copied into their cells on the device at every step, without a host sync.
* fusedopt's own writes (``set_hparam`` with numbers, the schedulers) write the dicts and the
  tables together, so every way of reading ``param_groups`` shows the values the next step
  uses. Graph mode is the one exception: ``set_hparam`` with a tensor (``DeviceSchedule``)
  writes the tables on the device only, and the dicts follow at ``sync_to_host()``.
"""
import math
from typing import NamedTuple, Optional

import torch

from fusedopt import _engine, _ext

# Adam's columns, which the tests read; every algorithm's are named by its descriptor
LR, WEIGHT_DECAY, BETA1, BETA2, EPS = range(5)
NUM_COLS = 8      # csrc/hparams.h kHpCols: room for every algorithm's columns


class Column(NamedTuple):
    """Where a table column comes from in a param_group, and its valid range."""
    key: str
    index: Optional[int] = None      # item of a pair (Adam's betas)
    low: float = 0.0
    high: float = math.inf
    high_open: bool = False          # [low, high) instead of [low, high]
    zero_flag: bool = False          # value != 0 is also an algorithm flag (SGD's momentum)
    boolean: bool = False            # a True/False group key, 1.0/0.0 in the table (lars_exclude)


class HparamTable:
    """The tables of one optimizer, and what they were last written from."""

    def __init__(self, columns, flags):
        """``columns``: table column -> Column; ``flags``: the keys of the algorithm flags."""
        self._entry = {col: k for k, col in enumerate(columns)}
        watch = _ext.C.GroupWatch if _ext.C is not None else _PyWatch
        self._watch = watch(watched(columns, flags), NUM_COLS)
        self.host = torch.zeros(0, NUM_COLS, dtype=torch.float64)   # the CPU table, if any
        self.tables = {}            # device -> float64 [num_groups, NUM_COLS]
        self._tensors = {}          # flat cell -> tensor value, copied on device every step
        self._tensor_plan = {}      # device -> (cells, unique tensors, position of each cell)
        self.rows = 0               # groups the tables were built for
        self.stale = True           # groups added or replaced: rebuild at the next step
        self.captured = False       # a step ran under CUDA graph capture
        self.has_cuda = False

    # ---- whole rows --------------------------------------------------------------------------
    def rebuild(self, groups, rows, devices):
        """Write every row (``rows``: per group, NUM_COLS numbers or tensors), reallocating only
        the tables whose number of rows changed."""
        n = len(groups)
        host = torch.tensor([[0.0 if torch.is_tensor(v) else float(v) for v in row]
                             for row in rows], dtype=torch.float64).reshape(n, NUM_COLS)
        tensors = {r * NUM_COLS + c: v for r, row in enumerate(rows)
                   for c, v in enumerate(row) if torch.is_tensor(v)}
        moved = [d for d, t in self.tables.items() if t.shape[0] != n and d.type == "cuda"]
        if moved and self.captured:
            self.captured = False
            raise RuntimeError(
                f"the hyper-parameter table on {moved[0]} must grow to {n} param groups, but a "
                "step of this optimizer was captured in a CUDA graph, which keeps reading the "
                "old table. Capture the graph again after add_param_group (the next step "
                "reallocates the table); Note [one truth], fusedopt/_hparams.py")
        if self.host.shape == host.shape:
            self.host.copy_(host)
        else:
            self.host = host
        old, self.tables = self.tables, {}
        for device in devices:
            if device.type == "cpu":
                self.tables[device] = self.host
            elif device in old and old[device].shape == host.shape:
                self.tables[device] = old[device]
                old[device].copy_(_engine.upload(host, device), non_blocking=True)
            else:
                self.tables[device] = _engine.upload(host, device)
        self.has_cuda = any(d.type == "cuda" for d in self.tables)
        self._watch.reset(groups)
        self._set_tensors(tensors)
        self.rows, self.stale = n, False

    def rewrite_rows(self, groups, rows, values):
        """Write the rows ``rows`` from ``values`` (checked by the caller) and remember them."""
        tensors = dict(self._tensors)
        cells = []
        for r, row in zip(rows, values):
            for c, v in enumerate(row):
                cell = r * NUM_COLS + c
                tensors.pop(cell, None)
                if torch.is_tensor(v):
                    tensors[cell] = v
                else:
                    self.host[r, c] = float(v)
                    cells.append(cell)
        self._watch.refresh(groups, list(rows))
        self._upload_cells(cells)
        if tensors.keys() != self._tensors.keys() or any(
                tensors[k] is not self._tensors[k] for k in tensors):
            self._set_tensors(tensors)

    # ---- every step ----------------------------------------------------------------------------
    def scan(self, groups):
        """Cells written since the last step reach every table; returns the rows Python must
        re-read (Note [one truth]), usually none."""
        found = self._watch.scan(groups, self.host)
        if found is None:
            return ()
        cells, slow = found
        self._upload_cells(cells)
        return slow

    def copy_tensors(self):
        """Tensor-valued cells into every table, on the device (no host sync)."""
        if not self._tensor_plan:
            return
        for device, (cells, tensors, position) in self._tensor_plan.items():
            values = torch.stack([t.detach().reshape(()).to(device=device, dtype=torch.float64,
                                                            non_blocking=True) for t in tensors])
            self.tables[device].view(-1).index_copy_(0, cells, values[position])

    # ---- columns -----------------------------------------------------------------------------
    def write_column(self, groups, column, values):
        """Write ``values`` (CPU float64, one per group) into the dicts and every table.
        Returns -1, -2 when a zero_flag value switched, or the first invalid index (nothing
        written then)."""
        code = self._watch.write(groups, self._entry[column], values, self.host)
        if code >= 0:
            return code
        for device, table in self.tables.items():
            if device.type != "cpu":
                table[:, column].copy_(_engine.upload(values, device), non_blocking=True)
        dropped = {k for k in self._tensors if k % NUM_COLS == column}
        if dropped:
            self._set_tensors({k: v for k, v in self._tensors.items() if k not in dropped})
        return code

    def write_device_column(self, column, values):
        """Graph mode: ``values`` (a tensor, one per group) into every table, on the device."""
        for device, table in self.tables.items():
            table[:, column].copy_(values.to(device=device, dtype=torch.float64,
                                             non_blocking=True), non_blocking=True)

    # ---- helpers -----------------------------------------------------------------------------
    def _upload_cells(self, cells):
        """``cells`` (flat indices) of the host table into every other table: one copy each."""
        if not cells or all(d.type == "cpu" for d in self.tables):
            return
        index = torch.tensor(cells, dtype=torch.int64)
        packed = torch.stack([index.to(torch.float64), self.host.view(-1)[index]])
        for device, table in self.tables.items():
            if device.type != "cpu":
                on_device = _engine.upload(packed, device)
                table.view(-1).index_copy_(0, on_device[0].long(), on_device[1])

    def _set_tensors(self, tensors):
        self._tensors = tensors
        self._tensor_plan = {}
        if not tensors:
            return
        unique = list({id(t): t for t in tensors.values()}.values())
        slot = {id(t): i for i, t in enumerate(unique)}
        for device in self.tables:
            cells = torch.tensor(list(tensors), dtype=torch.int64)
            position = torch.tensor([slot[id(t)] for t in tensors.values()], dtype=torch.int64)
            self._tensor_plan[device] = (_engine.upload(cells, device), unique,
                                         _engine.upload(position, device))


def watched(columns, flags):
    """What GroupWatch compares in every group: one entry per table column, then the flags."""
    entries = [(c.key, -1 if c.index is None else c.index, col, c.low, c.high, c.high_open,
                c.zero_flag) for col, c in columns.items()]
    return entries + [(key, -1, -1, 0.0, 0.0, False, False) for key in flags]


def read_column(groups, key, index):
    """float64 CPU tensor of ``group[key]`` (item ``index`` of it if not None) per group."""
    if _ext.C is not None:
        values = _ext.C.read_column(groups, key, -1 if index is None else index)
        if values is not None:
            return values
    out = []
    for r, g in enumerate(groups):        # tensors, or a malformed group
        try:
            out.append(float(g[key] if index is None else g[key][index]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            where = f"[{key!r}]" + ("" if index is None else f"[{index}]")
            raise TypeError(f"param_groups[{r}]{where}: expected a number ({exc})") from None
    return torch.tensor(out, dtype=torch.float64)


def write_column(groups, key, index, values):
    """``group[key] = values[i]`` (item ``index`` of a pair if not None) for every group."""
    if _ext.C is not None:
        bad = _ext.C.write_column(groups, key, -1 if index is None else index,
                                  values.contiguous())
        if bad >= 0:
            raise TypeError(f"param_groups[{bad}]: expected a dict with a pair under {key!r}")
        return
    for g, v in zip(groups, values.tolist()):
        g[key] = v if index is None else _replaced(g[key], index, v)


def _replaced(pair, index, value):
    out = list(pair)
    out[index] = value
    return out if isinstance(pair, list) else tuple(out)


class _PyWatch:
    """csrc/param_groups.cpp's GroupWatch in Python, for when fusedopt._C is not built."""

    def __init__(self, entries, num_cols):
        self.entries = entries
        self.num_cols = num_cols
        self.snap = []

    @property
    def rows(self):
        return len(self.snap)

    def _values(self, group):
        out = [group]
        for key, index, *_ in self.entries:
            try:
                v = group[key]
                out.append(v if index < 0 else v[index])
            except (KeyError, IndexError, TypeError):
                out.append(None)
        return out

    def reset(self, groups):
        self.snap = [self._values(g) for g in groups]

    def refresh(self, groups, rows):
        for r in rows:
            if r < len(self.snap) and r < len(groups):
                self.snap[r] = self._values(groups[r])

    @staticmethod
    def _number(v):
        if isinstance(v, float) or (type(v) is int):
            return float(v)
        return None

    def _fast(self, entry, v, old):
        _, _, column, low, high, high_open, zero_flag = entry
        x, was = self._number(v), self._number(old)
        if column < 0 or x is None or was is None or not (
                low <= x and (x < high if high_open else x <= high)):
            return None
        if zero_flag and (x == 0) != (was == 0):
            return None
        return x

    def scan(self, groups, host):
        cells, values, slow = [], [], []
        for r, group in enumerate(groups[:len(self.snap)]):
            now, snap = self._values(group), self.snap[r]
            if now[0] is not snap[0]:
                slow.append(r)
                continue
            pending = []
            for k, entry in enumerate(self.entries):
                if now[k + 1] is snap[k + 1]:
                    continue
                x = self._fast(entry, now[k + 1], snap[k + 1])
                if x is None:
                    slow.append(r)
                    break
                pending.append((k, x))
            else:
                for k, x in pending:
                    snap[k + 1] = now[k + 1]
                    cells.append(r * self.num_cols + self.entries[k][2])
                    values.append(x)
        if cells:        # one tensor op, as the C++ writes them directly
            host.view(-1)[torch.tensor(cells)] = torch.tensor(values, dtype=torch.float64)
        return (cells, slow) if cells or slow else None

    def write(self, groups, entry, values, host):
        key, index, column, low, high, high_open, zero_flag = self.entries[entry]
        column_values, values = values, values.tolist()
        for r, x in enumerate(values):
            if not (low <= x and (x < high if high_open else x <= high)):
                return r
        switched = False
        rows = []
        for r, (g, x) in enumerate(zip(groups, values)):
            current = self._values(g)[entry + 1]
            if not isinstance(g, dict) or (current is None and (index >= 0 or zero_flag)):
                continue              # malformed: left for the next scan to name
            was = self._number(current)
            switched |= zero_flag and (was is None or (was == 0) != (x == 0))
            g[key] = x if index < 0 else _replaced(g[key], index, x)
            rows.append(r)
            if r < len(self.snap) and self.snap[r][0] is g:
                self.snap[r][entry + 1] = g[key] if index < 0 else g[key][index]
        if len(rows) == len(values):
            host[:, column].copy_(column_values)
        elif rows:
            host[torch.tensor(rows), column] = torch.tensor([values[r] for r in rows],
                                                            dtype=torch.float64)
        return -2 if switched else -1
