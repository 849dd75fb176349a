"""The reference backend: plain PyTorch, written for clarity. It is the oracle of every test.

Each algorithm's math is its descriptor's ``update`` (fusedopt/algorithms/), which follows
torch.optim's for-loop implementations (`_single_tensor_adam`, `_single_tensor_sgd`) or the
published pseudo-code step by step; this module is the loop around it, with two documented
differences shared by every fusedopt backend (docs/internals.md): fp16/bf16 parameters are
computed in fp32, and the AMP unscale and the clip coefficient are applied to the grad inside the
step. With master copies (Note [master copy] in fusedopt/optimizer.py) the same math runs on the
fp32 master instead of the param.
"""
import torch

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
    """The value a step starts from, in the compute dtype: the master copy if the bucket has
    them (the param is then not read), else the param."""
    source = spec.states[-1][i] if spec.has_master else spec.params[i].detach()
    return source.to(ct)


def _write_param(spec, i, param):
    if spec.has_master:
        spec.states[-1][i].copy_(param)
    spec.params[i].detach().copy_(param)


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
        algo.update(param, g, states, spec.steps[i].item(), row, flags)
        _write_param(spec, i, param)
        for k, state in enumerate(states):
            spec.states[k][i].copy_(state)


def _norm(tensors, norm_type):
    tensors = [t for t in tensors if t.numel()]    # empty tensors add nothing (inf has no identity)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    # each in fp32 (fp64 for fp64 tensors), like the kernels' accumulators; the result in fp32
    norms = [torch.linalg.vector_norm(t.detach(), norm_type, dtype=_compute_dtype(t)) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type).float()


def tensors_norm(tensors, norm_type):
    return _norm(list(tensors), norm_type)


def bucket_norm(spec, norm_type):
    grads = [spec.grad(i) for i in range(len(spec.params))] + [p.grad for p in spec.pending]
    return _norm([g for g in grads if g is not None], norm_type)


def tensors_scale_(tensors, coef):
    torch._foreach_mul_(list(tensors), coef)
