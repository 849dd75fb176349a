"""The CUDA backend: the kernels of csrc/cuda/ through fusedopt._C, or a JIT build of the same
sources where the installed extension has none.

Note [cuda jit build]: setup.py compiles the CUDA kernels into fusedopt._C only where torch has
CUDA and nvcc exists at install time. Otherwise, on a machine with a GPU, a CUDA torch and nvcc,
the first question about this backend (``unavailable_reason``, asked by ``backend='auto'`` and
``available_backends()``) builds every source of fusedopt._C with the CUDA kernels (Note [jit
build] in fusedopt/_ext.py: cached, so later processes only load it; its own C++ namespace, so
it loads beside a CPU-only fusedopt._C). Buckets of this backend are made by the module that
steps them. A failed build makes the backend unavailable with the build's error as the reason.
Importing this module never builds and never fails (Note [import never fails]).
"""
import os
import shutil
import threading

import torch

from fusedopt import _ext
from fusedopt.backends import _compiled

NAME = "cuda"

_lock = threading.Lock()
_jit = {}          # "module" -> the JIT-built extension, or "error" -> why it is not there


def _has_kernels(module):
    return module is not None and hasattr(module, "cuda_step")


def _nvcc():
    from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    candidate = os.path.join(home, "bin", "nvcc") if home else None
    return shutil.which("nvcc") or (candidate if candidate and os.path.exists(candidate) else None)


def _build():
    """The extension with CUDA kernels, built on first call (Note [cuda jit build])."""
    if _nvcc() is None:
        raise RuntimeError("fusedopt._C has no CUDA kernels and nvcc was not found to build them "
                           "(set CUDA_HOME or put nvcc on PATH)")
    return _ext.jit_build("fusedopt_cuda_jit", cuda=True,
                          what="the CUDA kernels (fusedopt._C was installed without them)")


def _extension():
    if _has_kernels(_ext.C):
        return _ext.C
    with _lock:
        if "module" not in _jit and "error" not in _jit:
            try:
                _jit["module"] = _build()
            except Exception as exc:  # a failed build leaves the backend unavailable
                _jit["error"] = f"JIT build of the CUDA kernels failed: {type(exc).__name__}: {exc}"
        if "error" in _jit:
            raise RuntimeError(_jit["error"])
        return _jit["module"]


def unavailable_reason():
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return _compiled.load_error(_extension)


(supports, make_bucket, pending_with_grad, step, bucket_norm,
 tensors_norm) = _compiled.functions(_extension, "cuda_", "cuda")


def tensors_scale_(tensors, coef):
    _extension().cuda_tensors_scale_(list(tensors), coef)
