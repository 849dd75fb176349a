"""DTensor parameters (FSDP2's fully_shard): kernels step the local shards; norms of sharded
grads are reduced across the shards' process groups, on device, without a host sync."""
import math

import torch


def _dtensor_class():
    # DTensors exist only under an initialised process group: skip the import otherwise.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from torch.distributed.tensor import DTensor
    return DTensor


def placement_key(t):
    """(device_mesh, placements) of a DTensor, None for a plain tensor."""
    cls = _dtensor_class()
    if cls is None or not isinstance(t, cls):
        return None
    return (t.device_mesh, tuple(t.placements))


def local(t):
    """The tensor the kernels read and write: a DTensor's local shard, else ``t`` itself."""
    return t.to_local() if placement_key(t) is not None else t


def reduce_norm(local_norm, norm_type, key):
    """Global norm from this rank's norm of its shards. Only mesh dims where the tensors are
    sharded are reduced: a replicated dim holds the same values on every rank."""
    if key is None:
        return local_norm
    mesh, placements = key
    dims = [d for d, pl in enumerate(placements) if pl.is_shard()]
    if not dims:
        return local_norm
    inf = norm_type == math.inf
    value = local_norm.double() if inf else local_norm.double() ** norm_type
    op = torch.distributed.ReduceOp.MAX if inf else torch.distributed.ReduceOp.SUM
    for d in dims:
        torch.distributed.all_reduce(value, op=op, group=mesh.get_group(d))
    # back in the local norm's dtype (Note [norm dtype], fusedopt/backends/__init__.py)
    return (value if inf else value ** (1.0 / norm_type)).to(local_norm.dtype)
