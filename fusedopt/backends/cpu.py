"""The CPU backend: OpenMP + SIMD C++ kernels of fusedopt._C (csrc/cpu/), or of the same sources
built on first use where the install did not build fusedopt._C (Note [jit build] in
fusedopt/_ext.py, the mechanism the CUDA backend uses for its kernels)."""
import os
import threading

import torch

from fusedopt import _ext
from fusedopt.backends import _compiled

NAME = "cpu"

_lock = threading.Lock()
_jit = {}          # "module" -> the JIT-built extension, or "error" -> why it is not there


def _extension():
    if _ext.C is not None:
        return _ext.C
    with _lock:
        if not _jit:
            if os.environ.get("FUSEDOPT_NO_EXT", "0") not in ("", "0"):
                _jit["error"] = "FUSEDOPT_NO_EXT is set"
            else:
                try:
                    _jit["module"] = _ext.jit_build(
                        "fusedopt_cpu_jit", cuda=False,
                        what="the C++ CPU kernels (fusedopt._C was not built at install)")
                except Exception as exc:  # a failed build leaves the backend unavailable
                    _jit["error"] = f"JIT build failed: {type(exc).__name__}: {exc}"
        if "error" in _jit:
            raise RuntimeError(f"the compiled extension fusedopt._C could not be loaded "
                               f"({_ext.LOAD_ERROR}), and {_jit['error']}")
        return _jit["module"]


def unavailable_reason():
    return _compiled.load_error(_extension)


(supports, make_bucket, pending_with_grad, step, bucket_norm,
 tensors_norm) = _compiled.functions(_extension, "", "cpu")


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
