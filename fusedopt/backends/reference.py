"""The reference backend: plain PyTorch, written for clarity. It is the oracle of every test.

It follows torch.optim's for-loop implementations (`_single_tensor_adam`, `_single_tensor_sgd`)
step by step, with two documented differences shared by every fusedopt backend
(docs/internals.md): fp16/bf16 parameters are computed in fp32, and the AMP unscale and the
clip coefficient are applied to the grad inside the step. With master copies (Note [master
copy] in fusedopt/optimizer.py) the same math runs on the fp32 master instead of the param.
"""
import math

import torch

from fusedopt import _hparams

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


def adam_step(spec, hp, *, amsgrad, maximize, decoupled, clip_coef=None, inv_scale=None,
              found_inf=None):
    if _skipped(spec, found_inf):
        return
    rows = hp.tolist()
    for i, p in enumerate(spec.params):
        grad = spec.grad(i)
        if grad is None:
            continue
        row = rows[spec.group_index[i]]
        lr, wd = row[_hparams.LR], row[_hparams.WEIGHT_DECAY]
        beta1, beta2, eps = row[_hparams.BETA1], row[_hparams.BETA2], row[_hparams.EPS]
        ct = _compute_dtype(p)
        g = _grad(p, grad, inv_scale, clip_coef, maximize)
        param = _read_param(spec, i, ct)
        exp_avg, exp_avg_sq = (s.to(ct) for s in (spec.states[0][i], spec.states[1][i]))
        spec.steps[i] += 1
        step = spec.steps[i].item()
        if wd != 0:
            if decoupled:
                param.mul_(1 - lr * wd)
            else:
                g = g.add(param, alpha=wd)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        if amsgrad:
            max_sq = spec.states[2][i].to(ct)
            torch.maximum(max_sq, exp_avg_sq, out=max_sq)
            spec.states[2][i].copy_(max_sq)
            denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        _write_param(spec, i, param)
        spec.states[0][i].copy_(exp_avg)
        spec.states[1][i].copy_(exp_avg_sq)


def sgd_step(spec, hp, *, nesterov, maximize, clip_coef=None, inv_scale=None, found_inf=None):
    if _skipped(spec, found_inf):
        return
    rows = hp.tolist()
    has_buffer = len(spec.states) - spec.has_master == 1
    for i, p in enumerate(spec.params):
        grad = spec.grad(i)
        if grad is None:
            continue
        row = rows[spec.group_index[i]]
        lr, wd = row[_hparams.LR], row[_hparams.WEIGHT_DECAY]
        momentum, dampening = row[_hparams.MOMENTUM], row[_hparams.DAMPENING]
        ct = _compute_dtype(p)
        g = _grad(p, grad, inv_scale, clip_coef, maximize)
        param = _read_param(spec, i, ct)
        if wd != 0:
            g = g.add(param, alpha=wd)
        if has_buffer:
            buf = spec.states[0][i].to(ct)
            if spec.steps[i].item() == 0:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1 - dampening)
            spec.states[0][i].copy_(buf)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        param.add_(g, alpha=-lr)
        _write_param(spec, i, param)
        spec.steps[i] += 1


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
