"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): drop-in torch.optim.Adam/AdamW."""
import math

import torch

from fusedopt.algorithms.base import Algorithm, Column
from fusedopt.optimizer import FusedOptimizer


def update(p, g, states, t, row, flags):
    """torch.optim.adam._single_tensor_adam, op for op (Note [torch's rounding], csrc/cpu/adam.h)."""
    lr, wd, beta1, beta2 = row["lr"], row["weight_decay"], row["beta1"], row["beta2"]
    exp_avg, exp_avg_sq = states[0], states[1]
    if wd != 0:
        if flags["decoupled"]:
            p.mul_(1 - lr * wd)
        else:
            g = g.add(p, alpha=wd)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1 ** t)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** t)
    second = exp_avg_sq
    if flags["amsgrad"]:
        second = torch.maximum(states[2], exp_avg_sq, out=states[2])
    denom = (second.sqrt() / bias_correction2_sqrt).add_(row["eps"])
    p.addcdiv_(exp_avg, denom, value=-step_size)


ALGORITHM = Algorithm(
    name="adam", id=0, flag_names=("amsgrad", "maximize", "decoupled"),
    columns=(("lr", Column("lr")), ("weight_decay", Column("weight_decay")),
             ("beta1", Column("betas", 0, 0.0, 1.0, high_open=True)),
             ("beta2", Column("betas", 1, 0.0, 1.0, high_open=True)), ("eps", Column("eps"))),
    states=lambda f: ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if f["amsgrad"] else ()),
    update=update,
    group_flags=lambda g: {"amsgrad": g["amsgrad"], "maximize": g["maximize"],
                           "decoupled": g["decoupled_weight_decay"]},
    flag_keys=("amsgrad", "maximize", "decoupled_weight_decay"),
    aliases={"momentum": "beta1"},            # mmengine's momentum schedulers on Adam
    step_in_state=True)


def check_betas(group):
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")


class FusedAdam(FusedOptimizer, torch.optim.Adam):
    """torch.optim.Adam's arguments and defaults (L2 weight decay unless
    ``decoupled_weight_decay=True``), plus ``backend``. ``foreach``, ``fused`` and ``capturable``
    are accepted for compatibility: the step is always fused, and capturable by construction
    (step counters live on the parameters' device). ``skip_nonfinite=True`` skips, on device,
    every step in which any grad is inf or nan, and counts them in ``skipped_steps``.
    ``master_weights=True`` keeps an fp32 copy of each fp16/bf16 param in
    ``state['master_param']`` and steps that copy, with fp32 states (Note [master copy]); a no-op
    for fp32/fp64. ``kahan_sum=True`` keeps a compensation of each fp16/bf16 param instead (2
    B/param), with stochastically rounded bf16 states (fp32 beside fp16 params). ``state_dtype`` (torch.float32 or
    torch.bfloat16, stochastically rounded) chooses the states' dtype (README, "Low
    precision")."""

    ALGORITHM = ALGORITHM
    _check_pairs = staticmethod(check_betas)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False, backend="auto",
                 skip_nonfinite=False, master_weights=False, state_dtype=None, kahan_sum=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        skip_nonfinite=skip_nonfinite, master_weights=master_weights,
                        state_dtype=state_dtype, kahan_sum=kahan_sum)
        self._check_group(defaults)
        super().__init__(params, defaults, backend)


class FusedAdamW(FusedAdam, torch.optim.AdamW):
    """torch.optim.AdamW's arguments and defaults (decoupled weight decay 1e-2), plus FusedAdam's
    ``backend``, ``skip_nonfinite`` and ``master_weights``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend="auto", skip_nonfinite=False,
                 master_weights=False, state_dtype=None, kahan_sum=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, backend=backend,
                         skip_nonfinite=skip_nonfinite, master_weights=master_weights,
                         state_dtype=state_dtype, kahan_sum=kahan_sum)


ALGORITHM.classes[:] = [FusedAdam, FusedAdamW]
