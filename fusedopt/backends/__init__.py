"""The one place that picks a backend.

A backend is a module with this interface (all take a bucket handle made by ``make_bucket``):

    NAME: str
    unavailable_reason() -> str | None       None when usable on this machine
    supports(device) -> bool                  can it step tensors on this device
    make_bucket(spec: BucketSpec) -> handle
    pending_with_grad(handle) -> list[int]    indices into spec.pending whose grad is now set
    step(handle, hp, algo, flags, *, clip_coef, inv_scale, found_inf)
                                              one step of algorithm ``algo`` (a descriptor of
                                              fusedopt.algorithms) with flags word ``flags``
    bucket_norm(handle, norm_type) -> 0-d tensor   norm of every grad in the bucket
    tensors_norm(tensors, norm_type) -> 0-d tensor norm of a list of tensors
    (norm_type is 2.0 or inf there; other orders go to the reference: see ``native_norm``; the
    norm's dtype: Note [norm dtype])
    tensors_scale_(tensors, coef)             tensors[i] *= coef (a 0-d float32 or float64
                                              tensor, rounded to each one's compute type)

A spec's ``grads`` (when not None) are the grads of its params, given explicitly (the custom ops
of fusedopt/_ops.py, Note [compiled steps]); otherwise each param's ``.grad``.

``inv_scale`` and ``found_inf`` are 0-d float32 tensors on the bucket's device or None;
``clip_coef`` is a 0-d float32 or float64 one (Note [norm dtype]) or None. A step computes
``g = grad * inv_scale * clip_coef`` (that order: torch's unscale_ then clip_grad_norm_) in its
compute type (fp64 for fp64 params, else fp32), each factor rounded to it, and when
``found_inf`` is non-zero touches nothing at all.

Note [norm dtype]: torch's clip_grad_norm_ takes each grad's norm in the grad's dtype, their norm
in the dtype they promote to (float64 as soon as one grad is fp64), and multiplies every grad by
``max_norm / (total + 1e-6)`` formed in that dtype, which ``mul_`` rounds to the grad's compute
type. fusedopt's norms follow: fp64 grads are accumulated in double, and a norm over grads of
which one is fp64 is returned as float64, any other as float32, so the clip coefficient formed
from it is float64 or float32 alike and an fp64 grad is clipped by the float64 value. fp32 norms are torch's dtype;
for fp16/bf16 grads torch returns the norm in their dtype, fusedopt in float32, which it
accumulates in anyway. The total of several buckets' norms is ``combine_norms``: a stack, which
promotes as torch's does.
"""
import importlib
import os

import torch

ORDER = ("cuda", "triton", "cpu", "reference")
_cache = {}


def _module(name):
    if name not in _cache:
        _cache[name] = importlib.import_module(f"fusedopt.backends.{name}")
    return _cache[name]


def named(name):
    """The backend module called ``name`` (no availability check: its handles exist already)."""
    return _module(name)


def unavailable_reason(name):
    if name not in ORDER:
        return f"unknown backend {name!r}"
    try:
        return _module(name).unavailable_reason()
    except Exception as exc:  # Note [import never fails]
        return f"{type(exc).__name__}: {exc}"


def available_backends():
    """Names of the backends usable on this machine, in the order ``auto`` tries them."""
    return [name for name in ORDER if unavailable_reason(name) is None]


def check_backend(name, source=""):
    """Validate a ``backend=`` argument at construction time (before any state exists).
    ``source``: where the name came from, when not the argument (said in the errors)."""
    if name == "auto":
        return
    if not isinstance(name, str) or name not in ORDER:
        raise ValueError(f"Invalid backend: {name!r}{source}; expected 'auto' or one of "
                         f"{list(ORDER)} (available here: {available_backends()})")
    reason = unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"backend={name!r}{source} is not available: {reason}. "
                           f"Available backends: {available_backends()}")


def resolve(name, device):
    """The backend module that steps tensors on ``device`` for ``backend=name``."""
    source = ""
    if name == "auto" and os.environ.get("FUSEDOPT_BACKEND", "auto") != "auto":
        name = os.environ["FUSEDOPT_BACKEND"]
        source = " (from the environment variable FUSEDOPT_BACKEND)"
    if name != "auto":
        check_backend(name, source)
        module = _module(name)
        if not module.supports(device):
            raise RuntimeError(f"backend={name!r}{source} cannot step tensors on device {device}. "
                               f"Available backends: {available_backends()}")
        return module
    # triton on CPU tensors exists only under TRITON_INTERPRET=1, for tests: never picked by auto
    candidates = ORDER if device.type != "cpu" else ("cpu", "reference")
    for candidate in candidates:
        if unavailable_reason(candidate) is None and _module(candidate).supports(device):
            return _module(candidate)
    raise RuntimeError(f"no backend can step tensors on device {device}")  # reference always can


def native_norm(norm_type):
    """Backends reduce orders 2 and inf in their kernels; other orders use torch's vector_norm."""
    return norm_type in (2.0, float("inf"))


def combine_norms(norms, norm_type):
    first = norms[0]
    if len(norms) == 1:
        return first
    stacked = torch.stack([n.to(first.device) for n in norms])
    return stacked.max() if norm_type == float("inf") else torch.linalg.vector_norm(stacked, norm_type)
