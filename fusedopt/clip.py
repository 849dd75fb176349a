"""fusedopt.clip_grad_norm_: torch's clip_grad_norm_, with one multi-tensor norm reduction and,
when the parameters are exactly a fusedopt optimizer's, the scaling folded into its next step."""

import torch
from torch.utils.weak import WeakIdKeyDictionary

from fusedopt import _distributed, _ops, backends

# param -> the fusedopt optimizer that steps it, registered by the optimizer when it packs
# (this module imports nothing of the optimizers: they call in, Note [clip inside the step]).
_OWNERS = WeakIdKeyDictionary()


def register_owner(optimizer, params):
    """``optimizer`` steps ``params``: a clip over exactly them may defer into its step."""
    for p in params:
        _OWNERS[p] = optimizer


def check_clip_args(max_norm, norm_type):
    """Validate before anything is read; returns norm_type as a float."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm != max_norm:
        raise TypeError(f"Invalid max_norm: {max_norm!r}; expected a number")
    if max_norm < 0:
        raise ValueError(f"Invalid max_norm: {max_norm!r}; expected a value >= 0")
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid norm_type: {norm_type!r}; expected a positive number or 'inf'")
    if not p > 0:
        raise ValueError(f"Invalid norm_type: {norm_type!r}; expected a positive number or 'inf'")
    return p


def clip_coefficient(total_norm, max_norm, norm_type, error_if_nonfinite):
    """min(1, max_norm / (norm + 1e-6)) as a 0-d tensor on the norm's device, in the norm's dtype
    as torch forms it (float64 where a grad is fp64, else float32: Note [norm dtype],
    fusedopt/backends/__init__.py)."""
    if error_if_nonfinite and not bool(torch.isfinite(total_norm)):   # torch syncs here too
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` "
                           "is non-finite, so it cannot be clipped. To disable this error and "
                           "scale the gradients by the non-finite norm anyway, set "
                           "`error_if_nonfinite=False`")
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Like torch.nn.utils.clip_grad_norm_; returns the total norm as a 0-d tensor with no host
    sync (unless error_if_nonfinite=True, which must look at it, as torch does): float64 where a
    grad is fp64, as torch's, else float32 (Note [norm dtype], fusedopt/backends/__init__.py).

    Note [clip inside the step]: if ``parameters`` are exactly the parameters of one fusedopt
    optimizer, the grads are not rescaled here: that optimizer's next step() applies the
    coefficient as it reads each grad. Otherwise the grads are scaled in place, as torch does.
    ``foreach`` is accepted for compatibility.
    """
    norm_type = check_clip_args(max_norm, norm_type)
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    # (under torch.compile the grads are scaled here: Dynamo does not trace the weak dict)
    owner = (_OWNERS.get(params[0]) if params and not torch.compiler.is_compiling()
             else None)
    if owner is not None and owner.owns_exactly(params):
        # one reduction per bucket, from compiled code: no per-tensor Python work
        return owner.clip_grad_norm_(max_norm, norm_type, error_if_nonfinite)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # DTensor grads (FSDP2): norm of the local shards, reduced across the shards' ranks
    by_placement = {}
    for g in grads:
        by_placement.setdefault(_distributed.placement_key(g), []).append(_distributed.local(g))
    total = backends.combine_norms(
        [_distributed.reduce_norm(_ops.tensors_norm(local, norm_type), norm_type, key)
         for key, local in by_placement.items()], norm_type)
    coef = clip_coefficient(total, max_norm, norm_type, error_if_nonfinite)
    by_device = {}
    for local in by_placement.values():
        for g in local:
            by_device.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), gs in by_device.items():
        _ops.tensors_scale_(gs, coef.to(device))
    return total


__all__ = ["clip_grad_norm_"]
