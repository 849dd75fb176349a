"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes"): Adam's direction with a per-tensor trust ratio |w| / |update|. A drop-in for the
``type='Lamb'`` of mmpretrain's configs (timm's Lamb: the ResNet strikes-back schedules, SparK),
with apex's/DeepSpeed's ``adam_w_mode``. The global grad-norm clip runs on the device and folds
into the step's clip coefficient; the per-tensor norms are a first pass of the same step (Note
[two stages], csrc/algorithms.h), with no host sync."""
import math

import torch

from fusedopt.algorithms.adam import check_betas
from fusedopt.algorithms.base import Algorithm, Column
from fusedopt.algorithms.lars import norm
from fusedopt.optimizer import FusedOptimizer


def update(p, g, states, t, row, flags):
    """timm's Lamb step for one tensor, op for op (Note [LAMB], docs/internals.md)."""
    lr, wd, beta1, beta2 = row["lr"], row["weight_decay"], row["beta1"], row["beta2"]
    exp_avg, exp_avg_sq = states
    if not flags["decoupled"] and wd != 0:
        g = g.add(p, alpha=wd)
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1 if flags["grad_averaging"] else 1.0)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1, bias_correction2 = 1.0, 1.0
    if flags["bias_correction"]:
        bias_correction1, bias_correction2 = 1 - beta1 ** t, 1 - beta2 ** t
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(row["eps"])
    direction = (exp_avg / bias_correction1).div_(denom)
    if flags["decoupled"] and wd != 0:
        direction.add_(p, alpha=wd)
    if wd != 0 or flags["always_adapt"]:
        weight_norm, update_norm = norm(p), norm(direction)
        ratio = weight_norm / update_norm if weight_norm > 0 and update_norm > 0 else 1.0
        direction.mul_(min(ratio, 1.0) if flags["trust_clip"] else ratio)
    p.add_(direction, alpha=-lr)


ALGORITHM = Algorithm(
    name="lamb", id=4,
    flag_names=("bias_correction", "grad_averaging", "trust_clip", "always_adapt", "decoupled",
                "maximize"),
    columns=(("lr", Column("lr")), ("weight_decay", Column("weight_decay")),
             ("beta1", Column("betas", 0, 0.0, 1.0, high_open=True)),
             ("beta2", Column("betas", 1, 0.0, 1.0, high_open=True)), ("eps", Column("eps"))),
    states=lambda f: ("exp_avg", "exp_avg_sq"), update=update,
    group_flags=lambda g: {k: g[k] for k in ("bias_correction", "grad_averaging", "trust_clip",
                                             "always_adapt", "maximize")}
    | {"decoupled": g["adam_w_mode"]},
    flag_keys=("bias_correction", "grad_averaging", "trust_clip", "always_adapt", "adam_w_mode",
               "maximize"),
    aliases={"momentum": "beta1"}, step_in_state=True, two_stage=True,
    # the global clip's norm reads g; the first pass reads g, p, m and v and writes nothing (the
    # second recomputes the moments from them: the same bits as the reference's, fp16/bf16 too).
    # Bytes touched: on the cpu backend a tensor of <= 2^18 elements is read the second time from
    # cache (Note [two stages in cache], csrc/cpu/multi_tensor.h), so DRAM sees 32 of these 48
    rereads=lambda size, start, state: 2 * size + 2 * state + start)


class FusedLAMB(FusedOptimizer, torch.optim.Optimizer):
    """timm's/mmpretrain's Lamb arguments (``bias_correction``, ``grad_averaging``,
    ``max_grad_norm`` (None or 0: no global clip), ``trust_clip``, ``always_adapt``), apex's
    ``adam_w_mode`` (False: L2 decay into the moments), plus ``maximize``, ``backend``,
    ``skip_nonfinite`` and ``master_weights`` (see FusedAdam). State: ``step``, ``exp_avg``,
    ``exp_avg_sq`` per parameter (timm counts steps per group)."""

    ALGORITHM = ALGORITHM
    _check_pairs = staticmethod(check_betas)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 bias_correction=True, grad_averaging=True, max_grad_norm=1.0, trust_clip=False,
                 always_adapt=False, adam_w_mode=True, maximize=False, backend="auto",
                 skip_nonfinite=False, master_weights=False, state_dtype=None, kahan_sum=False):
        if max_grad_norm is not None and not max_grad_norm >= 0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r}; expected None or a "
                             "number >= 0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, grad_averaging=grad_averaging,
                        max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                        always_adapt=always_adapt, adam_w_mode=adam_w_mode, maximize=maximize,
                        skip_nonfinite=skip_nonfinite, master_weights=master_weights,
                        state_dtype=state_dtype, kahan_sum=kahan_sum)
        self._check_group(defaults)
        super().__init__(params, defaults, backend)

    def _grad_coefficient(self, buckets, clip_coef, inv_scale):
        """The global clip: 1 / max(1, |g| / max_grad_norm) over every grad of the optimizer, as
        they enter the step (unscaled and clipped), folded into the clip coefficient; in the
        norm's dtype (float64 where a grad is fp64, as timm's Lamb forms it: Note [norm dtype],
        fusedopt/backends/__init__.py)."""
        max_norm = self.defaults["max_grad_norm"]
        if not max_norm:
            return clip_coef
        total = self._global_norm(buckets, 2.0)
        for factor in (inv_scale, clip_coef):
            if factor is not None:
                total = total * factor.to(total.device)
        coef = 1.0 / torch.clamp(total / max_norm, min=1.0)
        return coef if clip_coef is None else clip_coef * coef.to(clip_coef.device)


ALGORITHM.classes[:] = [FusedLAMB]
