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
    bucket_norm(handle, norm_type) -> 0-d float32 tensor   norm of every grad in the bucket
    tensors_norm(tensors, norm_type) -> 0-d float32 tensor norm of a list of tensors
    (norm_type is 2.0 or inf there; other orders go to the reference: see ``native_norm``)
    tensors_scale_(tensors, coef)             tensors[i] *= coef (a 0-d float32 tensor), in place

A spec's ``grads`` (when not None) are the grads of its params, given explicitly (the custom ops
of fusedopt/_ops.py, Note [compiled steps]); otherwise each param's ``.grad``.

``clip_coef``, ``inv_scale`` and ``found_inf`` are 0-d float32 tensors on the bucket's device
or None. A step computes ``g = grad * inv_scale * clip_coef`` (that order: torch's unscale_ then
clip_grad_norm_), and when ``found_inf`` is non-zero touches nothing at all.
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
