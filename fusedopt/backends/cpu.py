"""The CPU backend: OpenMP + SIMD C++ kernels of fusedopt._C (csrc/cpu/)."""
import torch

from fusedopt import _ext

NAME = "cpu"


def unavailable_reason():
    if _ext.C is None:
        return f"the compiled extension fusedopt._C could not be loaded ({_ext.LOAD_ERROR})"
    return None


def supports(device):
    return device.type == "cpu"


def make_bucket(spec):
    return _ext.C.Bucket(spec.params, spec.states, spec.steps, spec.group_index, spec.pending,
                         spec.grads or [])


def pending_with_grad(handle):
    return _ext.C.pending_with_grad(handle)


def adam_step(handle, hp, *, amsgrad, maximize, decoupled, clip_coef=None, inv_scale=None,
              found_inf=None):
    _ext.C.adam_step(handle, hp, amsgrad, maximize, decoupled, clip_coef, inv_scale, found_inf)


def sgd_step(handle, hp, *, nesterov, maximize, clip_coef=None, inv_scale=None, found_inf=None):
    _ext.C.sgd_step(handle, hp, nesterov, maximize, clip_coef, inv_scale, found_inf)


def bucket_norm(handle, norm_type):
    return _ext.C.bucket_norm(handle, norm_type)


def tensors_norm(tensors, norm_type):
    return _ext.C.tensors_norm(list(tensors), norm_type)


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
