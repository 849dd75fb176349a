"""The reference backend: plain PyTorch, written for clarity. It is the oracle of every test.

Each algorithm's math is its descriptor's ``update`` (fusedopt/algorithms/), which follows
torch.optim's for-loop implementations (`_single_tensor_adam`, `_single_tensor_sgd`) or the
published pseudo-code step by step; this module is the loop around it, with two documented
differences shared by every fusedopt backend (docs/internals.md): fp16/bf16 parameters are
computed in fp32, and the AMP unscale and the clip coefficient are applied to the grad inside the
step. With master copies (Note [master copy] in fusedopt/optimizer.py) the same math runs on the
fp32 master instead of the param; Note [precision modes] (docs/internals.md) says what the other
modes read and write, Note [stochastic rounding] how bf16 states are rounded, both written here
plainly.
"""
import torch

from fusedopt import _engine

NAME = "reference"


def unavailable_reason():
    return None


def supports(device):
    return True


def make_bucket(spec):
    return spec


def pending_with_grad(spec):
    return [i for i, p in enumerate(spec.pending) if p.grad is not None]


def _compute_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _skipped(spec, found_inf):
    """Check every grad first (nothing may change if one is bad), then read found_inf."""
    for i in range(len(spec.params)):
        g = spec.grad(i)
        if g is not None and g.layout != torch.strided:
            raise RuntimeError("sparse gradients are not supported")
    return found_inf is not None and bool(found_inf.item())


def _grad(p, grad, inv_scale, clip_coef, maximize):
    g = grad.to(_compute_dtype(p))
    if inv_scale is not None:
        g = g * inv_scale
    if clip_coef is not None:
        g = g * clip_coef
    return -g if maximize else g


def _read_param(spec, i, ct):
    """The value a step starts from, in the compute dtype (Note [precision modes]): the master
    copy (the param is then not read), the param plus its compensation, or the param."""
    p = spec.params[i].detach()
    if spec.weights == _engine.MASTER:
        return spec.states[-1][i].to(ct)
    if spec.weights == _engine.KAHAN:
        return p.to(ct) + spec.states[-1][i].to(ct)
    return p.to(ct)


def _write_param(spec, i, param):
    p = spec.params[i].detach()
    if spec.weights == _engine.MASTER:
        spec.states[-1][i].copy_(param)
    p.copy_(param)
    if spec.weights == _engine.KAHAN:     # what the rounding of the param lost
        spec.states[-1][i].copy_(param - p.to(param.dtype))


# Note [stochastic rounding] (docs/internals.md), written plainly on int64 tensors holding
# uint32 values: every product is split in 16-bit halves so that no int64 overflows.
_MASK = 0xFFFFFFFF


def _mul32(x, c):
    """(x * c) mod 2^32 for uint32 values ``x`` (an int64 tensor) and a constant ``c``."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on int64 tensors (or Python ints) holding uint32 values."""
    if not torch.is_tensor(h):
        return int(fmix32(torch.tensor(h, dtype=torch.int64)))
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def sr_mix(h):
    """fmix32's first round, the element hash of Note [stochastic rounding]."""
    return _mul32(h ^ (h >> 16), 0x85EBCA6B)


def rounding_key(seed, k):
    """The key of state list ``k`` of a tensor with ``seed``."""
    return fmix32((seed ^ fmix32(k)) & _MASK)


def random_bits(key, numel, t):
    """bits(key, j, t) of every element index j < numel at step ``t`` (after the increment):
    an int64 tensor of uint32 values."""
    j = torch.arange(numel, dtype=torch.int64) & _MASK
    weyl = int(_mul32(torch.tensor(int(t) & _MASK), 0x9E3779B9))
    return (sr_mix(_mul32(j, 0x9E3779B1) ^ key) + weyl) & _MASK


def stochastic_round_bf16(x, key, t):
    """``x`` (float32) as bfloat16, rounded stochastically with the bits of ``key`` at step
    ``t``, element j of ``x`` in row-major order using bits(key, j, t)."""
    flat = x.detach().reshape(-1).to(torch.float32)
    r = random_bits(key, flat.numel(), t).to(flat.device) >> 16
    u = flat.view(torch.int32).to(torch.int64) & _MASK
    top = ((u + r) & _MASK) >> 16
    top = torch.where(torch.isnan(flat), torch.full_like(top, 0x7FC0), top)
    top = torch.where(top >= 0x8000, top - 0x10000, top)     # as int16 bits
    return top.to(torch.int16).view(torch.bfloat16).reshape(x.shape)


def _write_state(spec, k, i, value, t):
    """State k of params[i] in its storage dtype: stochastically rounded where the bucket has
    seeds, else round-to-nearest (``copy_``)."""
    target = spec.states[k][i]
    if spec.seeds:
        target.copy_(stochastic_round_bf16(value, rounding_key(spec.seeds[i], k), t))
    else:
        target.copy_(value)


def step(spec, hp, algo, flags, *, clip_coef=None, inv_scale=None, found_inf=None):
    """One step of ``algo`` (a descriptor of fusedopt.algorithms): for each param with a grad,
    its states and the param (or its master) in the compute dtype, the counter incremented in
    float32 as torch's ``state['step'] += 1``, then the algorithm's reference ``update``, then
    everything written back in its own dtype."""
    if _skipped(spec, found_inf):
        return
    rows = hp.tolist()
    names = algo.column_names
    flags = algo.flag_dict(flags)
    num_states = len(algo.state_names(flags))
    for i, p in enumerate(spec.params):
        grad = spec.grad(i)
        if grad is None:
            continue
        ct = _compute_dtype(p)
        g = _grad(p, grad, inv_scale, clip_coef, flags.get("maximize", False))
        param = _read_param(spec, i, ct)
        states = [spec.states[k][i].to(ct) for k in range(num_states)]
        spec.steps[i] += 1
        row = dict(zip(names, rows[spec.group_index[i]]))
        t = spec.steps[i].item()
        algo.update(param, g, states, t, row, flags)
        _write_param(spec, i, param)
        for k, state in enumerate(states):
            _write_state(spec, k, i, state, t)


def _norm(tensors, norm_type):
    # float64 if a tensor is fp64, else float32 (Note [norm dtype], fusedopt/backends/__init__.py)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    tensors = [t for t in tensors if t.numel()]    # empty tensors add nothing (inf has no identity)
    if not tensors:
        return torch.zeros((), dtype=dtype)
    # each in fp32 (fp64 for fp64 tensors), like the kernels' accumulators: torch's per-tensor
    # norms for fp32 and fp64 grads (for fp16/bf16 grads torch rounds them to their dtype)
    norms = [torch.linalg.vector_norm(t.detach(), norm_type, dtype=_compute_dtype(t)) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type).to(dtype)


def tensors_norm(tensors, norm_type):
    return _norm(list(tensors), norm_type)


def bucket_norm(spec, norm_type):
    grads = [spec.grad(i) for i in range(len(spec.params))] + [p.grad for p in spec.pending]
    return _norm([g for g in grads if g is not None], norm_type)


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
