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
A fusedopt implementation named with a mode suffix (``MODES``: ``fusedopt+master``,
``fusedopt-cuda+kahan``) is the same one in that precision mode (README, "Low precision"):
``+master`` fp32 master copies and fp32 states, ``+master-bf16`` masters with stochastically
rounded bf16 states, ``+kahan`` compensated params with bf16 states, ``+bf16-states``
stochastically rounded bf16 states alone (all no-ops for fp32 params but the states' dtype).
``+bf16-states`` moves what the default moves for bf16 (and fp16) params: it times the rounding.
"""
import importlib
import inspect

import torch

IMPLS = ("fusedopt", "fusedopt-cuda", "fusedopt-triton", "fusedopt-cpu", "fusedopt-reference",
         "torch-forloop", "torch-foreach", "torch-fused", "apex", "deepspeed", "te")
MAX_NORM = 1.0
MODES = {"+master": dict(master_weights=True),
         "+master-bf16": dict(master_weights=True, state_dtype=torch.bfloat16),
         "+kahan": dict(kahan_sum=True),
         "+bf16-states": dict(state_dtype=torch.bfloat16)}


def split(impl):
    """(implementation without its mode suffix, the suffix or "")."""
    for suffix in sorted(MODES, key=len, reverse=True):
        if impl.endswith(suffix):
            return impl[:-len(suffix)], suffix
    return impl, ""


def default_impls(device, dtype=torch.float32, *, host=False):
    """What a run without --impl compares on ``device``: fusedopt as users get it (and, for
    fp16/bf16 params, in each precision mode), its reference backend, torch's three
    implementations, and the third-party ones that could run there. ``host`` (the host
    preset): each fusedopt backend of the device and torch's fused implementation."""
    if host:
        backends = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
        return [f"fusedopt-{b}" for b in backends] + ["fusedopt-reference", "torch-fused"]
    master = (["fusedopt" + m for m in MODES] if dtype in (torch.float16, torch.bfloat16)
              else [])
    if device.type == "cuda":
        return ["fusedopt", *master, "fusedopt-cuda", "fusedopt-triton", "fusedopt-reference",
                "torch-forloop", "torch-foreach", "torch-fused", "apex", "deepspeed", "te"]
    return ["fusedopt", *master, "fusedopt-reference", "torch-forloop", "torch-foreach",
            "torch-fused", "deepspeed"]


def optimizers():
    """{name: (descriptor, fusedopt class)} for every class of every algorithm in
    ``fusedopt.algorithms.ALGORITHMS``: 'adam' (FusedAdam), 'adamw', 'sgd', 'lion', 'lars',
    'lamb'. A new algorithm's classes appear here, and in ``--optimizer``, with no edit."""
    from fusedopt.algorithms import ALGORITHMS
    return {cls.__name__[len("Fused"):].lower(): (algo, cls)
            for algo in ALGORITHMS.values() for cls in algo.classes}


# Changes to a class's defaults for the bench: weight decay on, so every implementation does it;
# SGD and LARS with momentum 0.9; LARS's lr (required) and decay of SimCLR's configs (lr 0.3 per
# 256 samples, 1e-6). An algorithm without an entry runs at its class's defaults.
_HYPER = {"adam": dict(weight_decay=1e-2), "sgd": dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
          "lion": dict(weight_decay=1e-2), "lars": dict(lr=0.3, momentum=0.9, weight_decay=1e-6)}


def hyper(optimizer):
    """Constructor keywords shared by every implementation: the fusedopt class's positional
    hyper-parameters (torch's order, which the peers share) with their defaults, changed by
    ``_HYPER``."""
    _, cls = optimizers()[optimizer]
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]   # self, params
    hp = {p.name: p.default for p in params
          if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty}
    hp.update(_HYPER.get(optimizer, {}))
    return hp


def flags_of(optimizer):
    """(descriptor, flags word) of ``optimizer`` at the bench's hyper-parameters."""
    algo, cls = optimizers()[optimizer]
    opt = cls([torch.zeros(1, requires_grad=True)], **hyper(optimizer), backend="reference")
    return algo, algo.flags_word(algo.group_flags(opt.param_groups[0]))


# The third-party peers: (impl, optimizer) -> {device type: (module, class, extra keywords)}.
# No entry: the package has no such optimizer (the check, Note [checked baselines], tells
# whether one that has it computes the same algorithm).
_PEERS = {
    ("apex", "adam"): {"cuda": ("apex.optimizers", "FusedAdam", dict(adam_w_mode=False))},
    ("apex", "adamw"): {"cuda": ("apex.optimizers", "FusedAdam", dict(adam_w_mode=True))},
    ("apex", "sgd"): {"cuda": ("apex.optimizers", "FusedSGD", {})},
    ("apex", "lamb"): {"cuda": ("apex.optimizers", "FusedLAMB", dict(adam_w_mode=True))},
    ("te", "adam"): {"cuda": ("transformer_engine.pytorch.optimizers", "FusedAdam",
                              dict(adam_w_mode=False))},
    ("te", "adamw"): {"cuda": ("transformer_engine.pytorch.optimizers", "FusedAdam",
                               dict(adam_w_mode=True))},
    ("te", "sgd"): {"cuda": ("transformer_engine.pytorch.optimizers", "FusedSGD", {})},
    ("deepspeed", "adam"): {"cpu": ("deepspeed.ops.adam", "DeepSpeedCPUAdam",
                                    dict(adamw_mode=False)),
                            "cuda": ("deepspeed.ops.adam", "FusedAdam", dict(adam_w_mode=False))},
    ("deepspeed", "adamw"): {"cpu": ("deepspeed.ops.adam", "DeepSpeedCPUAdam",
                                     dict(adamw_mode=True)),
                             "cuda": ("deepspeed.ops.adam", "FusedAdam", dict(adam_w_mode=True))},
    ("deepspeed", "lion"): {"cpu": ("deepspeed.ops.lion", "DeepSpeedCPULion", {}),
                            "cuda": ("deepspeed.ops.lion", "FusedLion", {})},
}


def _torch_class(optimizer):
    """torch.optim's class of ``optimizer`` (FusedAdamW -> torch.optim.AdamW), or None."""
    return getattr(torch.optim, optimizers()[optimizer][1].__name__[len("Fused"):], None)


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
        if _torch_class(optimizer) is None:
            return f"torch.optim has no {optimizers()[optimizer][1].__name__[len('Fused'):]}"
        if impl == "torch-fused" and device.type not in ("cpu", "cuda", "mps", "xpu"):
            return f"torch has no fused {optimizer} on {device.type}"
        return None
    where = _PEERS.get((impl, optimizer))
    if where is None:
        return f"{impl} has no fused {optimizer}"
    if device.type not in where:
        return f"{impl}'s fused {optimizer} runs on {' and '.join(where).upper()} tensors only"
    return _import(where[device.type][0])[1]


def build(impl, optimizer, groups, device, hp=None):
    """The optimizer of ``impl`` over ``groups`` (a list of param-group dicts), with the
    constructor keywords ``hp`` (default: ``hyper(optimizer)``)."""
    hp = hyper(optimizer) if hp is None else hp
    impl, mode = split(impl)
    if impl.startswith("fusedopt"):
        return optimizers()[optimizer][1](groups, **hp, backend=impl.partition("-")[2] or "auto",
                                          **MODES.get(mode, {}))
    if impl.startswith("torch-"):
        flags = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
                 "torch-fused": dict(fused=True)}[impl]
        return _torch_class(optimizer)(groups, **hp, **flags)
    if (impl, optimizer) in _PEERS:
        module, name, extra = _PEERS[(impl, optimizer)][device.type]
        return getattr(_import(module)[0], name)(groups, **hp, **extra)
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
