"""The backend interface over fusedopt's compiled extension, shared by the cpu and cuda backends:
the same calls under the extension's names for their device ("step" on the CPU, "cuda_step" on
CUDA; Note [algorithm as data] in docs/internals.md). ``extension`` returns the loaded (or JIT-built)
module, so nothing is loaded before the first call."""


def functions(extension, prefix, device_type):
    """(supports, make_bucket, pending_with_grad, step, bucket_norm, tensors_norm) for
    ``extension`` and tensors on devices of ``device_type``."""

    def supports(device):
        return device.type == device_type

    def make_bucket(spec):
        return extension().Bucket(spec.params, spec.states, spec.steps, spec.group_index,
                                  spec.pending, spec.grads or [], spec.weights, spec.seeds)

    def pending_with_grad(handle):
        return extension().pending_with_grad(handle)

    def step(handle, hp, algo, flags, *, clip_coef=None, inv_scale=None, found_inf=None):
        getattr(extension(), prefix + "step")(handle, hp, algo.id, flags, clip_coef, inv_scale,
                                              found_inf)

    def bucket_norm(handle, norm_type):
        return getattr(extension(), prefix + "bucket_norm")(handle, norm_type)

    def tensors_norm(tensors, norm_type):
        return getattr(extension(), prefix + "tensors_norm")(list(tensors), norm_type)

    return supports, make_bucket, pending_with_grad, step, bucket_norm, tensors_norm


def load_error(extension):
    """None when ``extension()`` loads (or builds), else why it does not."""
    try:
        extension()
    except RuntimeError as exc:
        return str(exc)
    return None
