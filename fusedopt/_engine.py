"""The multi-tensor engine's Python half: buckets, and the one pinned upload.

Note [pack once]: parameters are packed into buckets keyed by (device, dtype, algorithm flags,
master weights)
on the first step, and again only after add_param_group, load_state_dict, a first grad on a
parameter without state, or a change of an algorithm flag. Each backend turns a BucketSpec into
a handle once; afterwards a step costs O(number of buckets) in Python, whatever the number of
tensors or groups.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch


PLAIN, MASTER, KAHAN = 0, 1, 2     # BucketSpec.weights == csrc/bucket.h Weights


@dataclass
class BucketSpec:
    """Every parameter of one optimizer that shares (device, dtype, flags). Field names and
    meanings are those of csrc/bucket.h, so the C++ backends read it one-to-one."""
    device: torch.device
    dtype: torch.dtype
    flags: int                                         # the algorithm's flags word
    params: List[torch.Tensor] = field(default_factory=list)
    states: List[List[torch.Tensor]] = field(default_factory=list)
    steps: List[torch.Tensor] = field(default_factory=list)
    group_index: List[int] = field(default_factory=list)
    pending: List[torch.Tensor] = field(default_factory=list)
    pending_group: List[int] = field(default_factory=list)
    pending_source: List[torch.Tensor] = field(default_factory=list)  # user-facing param of each
    placement: Any = None                              # (mesh, placements) of DTensor params
    groups: Any = None                                 # the optimizer's param_groups: error texts
    # explicit grads of params (fusedopt._ops under torch.compile); None: each param's .grad
    grads: Optional[List[Optional[torch.Tensor]]] = None
    # Note [precision modes] (docs/internals.md): PLAIN, MASTER (last state list: fp32 copies)
    # or KAHAN (last state list: compensations in the params' dtype)
    weights: int = 0
    # one seed per param (stochastically rounded bf16 states), or empty
    seeds: List[int] = field(default_factory=list)

    @property
    def has_master(self):
        """The last state list holds fp32 master copies of fp16/bf16 params (Note [master copy]
        in fusedopt/optimizer.py)."""
        return self.weights == MASTER

    @property
    def has_extra(self):
        """The last state list is the weights mode's (masters or compensations), not the
        algorithm's."""
        return self.weights != PLAIN

    def grad(self, i):
        return self.params[i].grad if self.grads is None else self.grads[i]


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
    algo: Any                                          # its fusedopt.algorithms descriptor
    flags: int                                         # the algorithm's flags word
    hp: torch.Tensor                                   # the hyper-parameter table of its device


def upload(host, device):
    """The CPU tensor ``host`` on ``device``, without a host sync (the one pinned upload of
    fusedopt): a CUDA copy from pageable memory waits for the stream, so it goes through pinned
    memory, which torch's caching host allocator keeps alive until the copy is done. On the CPU,
    a copy (callers may write either one)."""
    if device.type == "cpu":
        return host.clone()
    return host.pin_memory().to(device, non_blocking=True)
