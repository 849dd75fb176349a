"""One functional entry per algorithm: a step of one bucket on the backend that owns it.

``bucket`` is a fusedopt._engine.Bucket; ``hp`` the hyper-parameter table of its device.
``clip_coef``, ``inv_scale`` and ``found_inf`` are 0-d float32 tensors on that device, or None
(docs/internals.md, "Step semantics").
"""


def adam(bucket, hp, *, amsgrad, maximize, decoupled, master_weights=False, clip_coef=None,
         inv_scale=None, found_inf=None):
    """Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) over every tensor of the bucket.
    ``master_weights`` is a bucketing key: the backends find the fp32 master copies, where the
    bucket has them, as its last state list (Note [master copy] in fusedopt/optimizer.py)."""
    del master_weights
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
    bucket.backend.sgd_step(bucket.handle, hp, nesterov=nesterov, maximize=maximize,
                            clip_coef=clip_coef, inv_scale=inv_scale, found_inf=found_inf)
