"""The multi-tensor engine's Python half: buckets, packing and the hyper-parameter tables.

Note [pack once]: parameters are packed into buckets keyed by (device, dtype, algorithm flags)
on the first step, and again only after add_param_group, load_state_dict, a first grad on a
parameter without state, or a change of an algorithm flag. Each backend turns a BucketSpec into
a handle once; afterwards a step costs O(number of buckets) in Python, whatever the number of
tensors or groups.
"""
from dataclasses import dataclass, field
from typing import Any, List

import torch

from fusedopt import _hparams


@dataclass
class BucketSpec:
    """Every parameter of one optimizer that shares (device, dtype, flags). Field names and
    meanings are those of csrc/bucket.h, so the C++ backends read it one-to-one."""
    device: torch.device
    dtype: torch.dtype
    flags: tuple                                       # ((name, value), ...) algorithm flags
    params: List[torch.Tensor] = field(default_factory=list)
    states: List[List[torch.Tensor]] = field(default_factory=list)
    steps: List[torch.Tensor] = field(default_factory=list)
    group_index: List[int] = field(default_factory=list)
    pending: List[torch.Tensor] = field(default_factory=list)
    pending_group: List[int] = field(default_factory=list)
    pending_source: List[torch.Tensor] = field(default_factory=list)  # user-facing param of each
    placement: Any = None                              # (mesh, placements) of DTensor params
    groups: Any = None                                 # the optimizer's param_groups: error texts

    @property
    def has_master(self):
        """The last state list holds fp32 master copies of fp16/bf16 params (Note [master copy]
        in fusedopt/optimizer.py); the algorithm's own states have the params' dtype."""
        return (self.dtype in (torch.float16, torch.bfloat16) and bool(self.states)
                and bool(self.states[-1]) and self.states[-1][0].dtype == torch.float32)


def describe_param(groups, p):
    """``param_groups[g]['params'][i]`` (with its name where the optimizer was given named
    parameters), for error messages; found by identity, so it costs O(params) only there."""
    for g, group in enumerate(groups or ()):
        for i, q in enumerate(group["params"]):
            if q is p:
                names = group.get("param_names")
                return f"param_groups[{g}]['params'][{i}]" + (f" ({names[i]!r})" if names else "")
    return f"a parameter of shape {tuple(p.shape)}"


@dataclass
class Bucket:
    spec: BucketSpec
    backend: Any                                       # backend module (fusedopt/backends)
    handle: Any                                        # what backend.make_bucket(spec) returned
    kwargs: dict                                       # flags as step keyword arguments


class TrackedGroup(dict):
    """A param_group dict that marks its optimizer's tables stale when written.

    torch's and mmengine's schedulers write floats into param_group['lr'] etc.; noticing the
    write here keeps the per-step check O(1) instead of comparing every group's values.
    """
    __slots__ = ("_stale",)

    def __init__(self, stale, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stale = stale

    def _touch(self):
        self._stale[0] = True

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._touch()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._touch()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._touch()

    def setdefault(self, key, default=None):
        if key not in self:
            self._touch()
        return super().setdefault(key, default)

    def pop(self, key, *default):
        self._touch()
        return super().pop(key, *default)

    def __reduce__(self):  # pickle/deepcopy as a plain dict: the flag belongs to one optimizer
        return (dict, (dict(self),))


def build_tables(groups, row_of, devices):
    """One float64 [G, NUM_COLS] table per device (Note [lr lives on the device]).

    Tensor-valued hyper-parameters (torch accepts a Tensor lr) are copied in on device, so a
    CUDA tensor lr never syncs. Returns {device: table}.
    """
    rows = [row_of(g) for g in groups]
    host = torch.tensor([[float(v) if not torch.is_tensor(v) else 0.0 for v in r] for r in rows],
                        dtype=torch.float64).reshape(len(rows), _hparams.NUM_COLS)
    tables = {}
    for device in devices:
        table = to_device(host, device)
        for g, row in enumerate(rows):
            for c, v in enumerate(row):
                if torch.is_tensor(v):
                    table[g, c].copy_(v.reshape(()), non_blocking=True)
        tables[device] = table
    return tables


def write_column(tables, column, values):
    """Write one column of every table: one copy per device, whatever the number of groups."""
    for device, table in tables.items():
        if torch.is_tensor(values):
            table[:, column].copy_(values.to(device=device, dtype=torch.float64, non_blocking=True),
                                   non_blocking=True)
        else:
            table[:, column].copy_(to_device(torch.tensor(values, dtype=torch.float64), device),
                                   non_blocking=True)


def to_device(host, device):
    """A copy of the CPU tensor ``host`` on ``device`` with no host sync."""
    if device.type == "cpu":
        return host.clone()
    # pinned source: the copy is truly asynchronous, no host sync on the step path
    return host.pin_memory().to(device, non_blocking=True)
