"""The implementations the benchmark compares, and how each takes one optimizer step.

Every implementation is built on the *same* parameter tensors (grads included); each owns its
optimizer state. A step is what a training loop runs after backward():
- plain: ``opt.step()``;
- ``--clip``: fusedopt uses its fused path, ``opt.clip_grad_norm_(max_norm)`` then ``opt.step()``
  (the coefficient is applied inside the update pass); every other implementation runs
  ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` then ``opt.step()``;
- ``--amp``: fp16 loss scaling with a ``torch.amp.GradScaler`` (the 'cpu' one on CPU); the grads
  are the scaled grads backward() would leave. torch's and third-party optimizers run torch's
  recipe: ``scaler.step(opt); scaler.update()`` (for-loop / foreach: ``unscale_`` inside; torch's
  fused: its grad_scale/found_inf contract), and with ``--clip`` first ``scaler.unscale_(opt)``
  and ``clip_grad_norm_(foreach=True)``. fusedopt runs its fused grad_scale/found_inf path, the
  one ``fusedopt.AmpOptimWrapper`` takes: one norm reduction over the scaled grads gives found_inf
  (and the clip norm), the step unscales and clips inline and skips itself on inf, then
  GradScaler's scale update runs unchanged.
A fusedopt implementation named with ``+master`` (``fusedopt+master``, ``fusedopt-cuda+master``)
is the same one with ``master_weights=True``: fp32 master copies of fp16/bf16 params (a no-op
for fp32).
"""
import importlib

import torch

IMPLS = ("fusedopt", "fusedopt-cuda", "fusedopt-triton", "fusedopt-cpu", "fusedopt-reference",
         "torch-forloop", "torch-foreach", "torch-fused", "apex", "deepspeed", "te")
MAX_NORM = 1.0
MASTER = "+master"


def split(impl):
    """(implementation without the suffix, whether it has ``+master``)."""
    base = impl[:-len(MASTER)] if impl.endswith(MASTER) else impl
    return base, base != impl


def default_impls(device, dtype=torch.float32, *, host=False):
    """What a run without --impl compares on ``device``: fusedopt as users get it (and, for
    fp16/bf16 params, with master weights), its reference backend, torch's three
    implementations, and the third-party ones that could run there. ``host`` (the host
    preset): each fusedopt backend of the device and torch's fused implementation."""
    if host:
        backends = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
        return [f"fusedopt-{b}" for b in backends] + ["fusedopt-reference", "torch-fused"]
    master = ["fusedopt+master"] if dtype in (torch.float16, torch.bfloat16) else []
    if device.type == "cuda":
        return ["fusedopt", *master, "fusedopt-cuda", "fusedopt-triton", "fusedopt-reference",
                "torch-forloop", "torch-foreach", "torch-fused", "apex", "deepspeed", "te"]
    return ["fusedopt", *master, "fusedopt-reference", "torch-forloop", "torch-foreach",
            "torch-fused", "deepspeed"]


def hyper(optimizer):
    """Constructor keywords shared by every implementation (weight decay on, so all do it)."""
    if optimizer == "sgd":
        return dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)
    return dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def _import(module):
    try:
        return importlib.import_module(module), None
    except Exception as exc:   # ImportError, or a broken install raising anything at import
        return None, f"cannot import {module} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


def unavailable_reason(impl, optimizer, device):
    """None if ``impl`` can run ``optimizer`` on ``device`` here, else why not."""
    impl = split(impl)[0]
    if impl.startswith("fusedopt"):
        from fusedopt import backends
        backend = impl.partition("-")[2] or "auto"
        if backend == "auto":
            return None
        gpu_only = backend in ("cuda", "triton") and device.type != "cuda"
        reason = backends.unavailable_reason(backend)
        if reason is not None:
            where = " (and it steps CUDA tensors only)" if gpu_only else ""
            return f"fusedopt backend {backend!r} unavailable: {reason}{where}"
        if gpu_only or not backends._module(backend).supports(device):
            return f"fusedopt backend {backend!r} does not step tensors on {device.type}"
        return None
    if impl.startswith("torch-"):
        if impl == "torch-fused" and device.type not in ("cpu", "cuda", "mps", "xpu"):
            return f"torch has no fused {optimizer} on {device.type}"
        return None
    if device.type != "cuda" and impl in ("apex", "te"):
        return f"{impl}'s fused optimizers run on CUDA tensors only"
    if impl == "deepspeed" and optimizer == "sgd":
        return "DeepSpeed has no fused SGD"
    module = {"apex": "apex.optimizers", "te": "transformer_engine.pytorch.optimizers",
              "deepspeed": "deepspeed.ops.adam"}[impl]
    return _import(module)[1]


def build(impl, optimizer, groups, device, hp=None):
    """The optimizer of ``impl`` over ``groups`` (a list of param-group dicts), with the
    constructor keywords ``hp`` (default: ``hyper(optimizer)``)."""
    hp = hyper(optimizer) if hp is None else hp
    adamw = optimizer == "adamw"
    impl, master = split(impl)
    if impl.startswith("fusedopt"):
        import fusedopt
        cls = {"adam": fusedopt.FusedAdam, "adamw": fusedopt.FusedAdamW, "sgd": fusedopt.FusedSGD}
        return cls[optimizer](groups, **hp, backend=impl.partition("-")[2] or "auto",
                              master_weights=master)
    if impl.startswith("torch-"):
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        flags = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
                 "torch-fused": dict(fused=True)}[impl]
        return cls[optimizer](groups, **hp, **flags)
    if impl == "apex":
        mod = _import("apex.optimizers")[0]
        if optimizer == "sgd":
            return mod.FusedSGD(groups, **hp)
        return mod.FusedAdam(groups, **hp, adam_w_mode=adamw)
    if impl == "te":
        mod = _import("transformer_engine.pytorch.optimizers")[0]
        if optimizer == "sgd":
            return mod.FusedSGD(groups, **hp)
        return mod.FusedAdam(groups, **hp, adam_w_mode=adamw)
    if impl == "deepspeed":
        mod = _import("deepspeed.ops.adam")[0]
        if device.type == "cpu":
            return mod.DeepSpeedCPUAdam(groups, **hp, adamw_mode=adamw)
        return mod.FusedAdam(groups, **hp, adam_w_mode=adamw)
    raise ValueError(f"unknown implementation {impl!r}")


def backend_of(impl, opt):
    """Which fusedopt backend ``opt`` steps with (after its first step), else None."""
    if not impl.startswith("fusedopt"):
        return None
    buckets = getattr(opt, "_buckets", None) or []
    names = sorted({getattr(b.backend, "NAME", "?") for b in buckets})
    return ",".join(names) or None


def make_step(impl, opt, params, *, clip, amp, device, max_norm=MAX_NORM):
    """A no-argument callable running one training-loop optimizer step of ``impl`` (``clip``:
    to ``max_norm``)."""
    fused = impl.startswith("fusedopt")
    if not amp:
        if not clip:
            return opt.step
        if fused:
            def step():
                opt.clip_grad_norm_(max_norm)
                opt.step()
        else:
            def step():
                torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
                opt.step()
        return step
    if fused:
        return _fused_amp_step(opt, clip=clip, device=device, max_norm=max_norm)
    scaler = _scaler(device)

    def step():
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        scaler.step(opt)
        scaler.update()
    return step


def _scaler(device):
    scaler = torch.amp.GradScaler(device.type)
    scaler.scale(torch.ones((), device=device))   # creates its scale tensor, as scaling a loss would
    return scaler


def _fused_amp_step(opt, *, clip, device, max_norm):
    """fusedopt's fused AMP step, through the public ``fusedopt.AmpOptimWrapper`` (fp16 scaling)."""
    from fusedopt.config import AmpOptimWrapper
    wrapper = AmpOptimWrapper(optimizer=opt, dtype="float16",
                              clip_grad=dict(max_norm=max_norm) if clip else None)
    wrapper.loss_scaler.scale(torch.ones((), device=device))
    if not wrapper._fused_amp_ok():
        raise RuntimeError("fusedopt.AmpOptimWrapper did not take its fused AMP path")
    return wrapper.step
