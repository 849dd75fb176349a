"""One functional entry per algorithm: a step of one bucket, on the backend that owns it.

``bucket`` is a fusedopt._engine.Bucket; ``hp`` the hyper-parameter table of its device.
``clip_coef``, ``inv_scale`` and ``found_inf`` are 0-d float32 tensors on that device, or None
(docs/internals.md, "Step semantics"). Eagerly an entry steps the bucket's prebuilt handle;
under torch.compile it calls the matching torch.library op with the bucket's tensors (Note
[compiled steps], fusedopt/_ops.py), which the graph holds.
"""
import torch

from fusedopt import backends


def _lists(bucket):
    """(params, their grads, flattened states) of a bucket, for the ops."""
    spec = bucket.spec
    return (spec.params, [p.grad for p in spec.params],
            [s for states in spec.states for s in states])


def adam(bucket, hp, *, amsgrad, maximize, decoupled, master_weights=False, clip_coef=None,
         inv_scale=None, found_inf=None):
    """Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) over every tensor of the bucket.
    ``master_weights`` is a bucketing key: the backends find the fp32 master copies, where the
    bucket has them, as its last state list (Note [master copy] in fusedopt/optimizer.py)."""
    del master_weights
    if torch.compiler.is_compiling():
        from fusedopt import _ops  # noqa: F401
        torch.ops.fusedopt.adam_(*_lists(bucket), bucket.spec.steps, hp, bucket.spec.group_index,
                                 amsgrad, maximize, decoupled, clip_coef, inv_scale, found_inf,
                                 bucket.backend.NAME)
        return
    bucket.backend.adam_step(bucket.handle, hp, amsgrad=amsgrad, maximize=maximize,
                             decoupled=decoupled, clip_coef=clip_coef, inv_scale=inv_scale,
                             found_inf=found_inf)


def sgd(bucket, hp, *, momentum, nesterov, maximize, master_weights=False, clip_coef=None,
        inv_scale=None, found_inf=None):
    """SGD over every tensor of the bucket. ``momentum`` says whether the bucket keeps momentum
    buffers (its groups have momentum != 0) and ``master_weights`` whether its fp16/bf16 params
    keep fp32 master copies: both are bucketing keys, the backends read them from the state
    lists (a momentum buffer list, then the master list)."""
    del momentum, master_weights
    if torch.compiler.is_compiling():
        from fusedopt import _ops  # noqa: F401
        torch.ops.fusedopt.sgd_(*_lists(bucket), bucket.spec.steps, hp, bucket.spec.group_index,
                                nesterov, maximize, clip_coef, inv_scale, found_inf,
                                bucket.backend.NAME)
        return
    bucket.backend.sgd_step(bucket.handle, hp, nesterov=nesterov, maximize=maximize,
                            clip_coef=clip_coef, inv_scale=inv_scale, found_inf=found_inf)


def norm(bucket, norm_type):
    """The norm (any order) of every grad of the bucket, its params without state included:
    a 0-d float32 tensor on its device. Orders 2 and inf are one multi-tensor reduction."""
    spec = bucket.spec
    if not backends.native_norm(norm_type):
        grads = [p.grad for p in spec.params + spec.pending if p.grad is not None]
        return backends.named("reference").tensors_norm(grads, norm_type)
    if torch.compiler.is_compiling():
        from fusedopt import _ops  # noqa: F401
        grads = [p.grad for p in spec.params + spec.pending if p.grad is not None]
        return torch.ops.fusedopt.norm(grads, norm_type, bucket.backend.NAME)
    return bucket.backend.bucket_norm(bucket.handle, norm_type)
