"""One functional entry per algorithm: a step of one bucket on the backend that owns it.

``bucket`` is a fusedopt._engine.Bucket; ``hp`` the hyper-parameter table of its device.
``clip_coef``, ``inv_scale`` and ``found_inf`` are 0-d float32 tensors on that device, or None
(docs/internals.md, "Step semantics").
"""


def adam(bucket, hp, *, amsgrad, maximize, decoupled, clip_coef=None, inv_scale=None,
         found_inf=None):
    """Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) over every tensor of the bucket."""
    bucket.backend.adam_step(bucket.handle, hp, amsgrad=amsgrad, maximize=maximize,
                             decoupled=decoupled, clip_coef=clip_coef, inv_scale=inv_scale,
                             found_inf=found_inf)


def sgd(bucket, hp, *, momentum, nesterov, maximize, clip_coef=None, inv_scale=None,
        found_inf=None):
    """SGD over every tensor of the bucket. ``momentum`` says whether the bucket keeps momentum
    buffers (its groups have momentum != 0); the backends read that from its state lists."""
    del momentum  # a bucketing key only: see above
    bucket.backend.sgd_step(bucket.handle, hp, nesterov=nesterov, maximize=maximize,
                            clip_coef=clip_coef, inv_scale=inv_scale, found_inf=found_inf)
