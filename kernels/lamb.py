"""LAMB (Note [LAMB], docs/internals.md): the block math of kernels/preamble.py's kernel, in two
stages (Note [two stages], csrc/algorithms.h), op for op as timm's Lamb (the fusedopt reference)
in the compute dtype (Note [compute precision], kernels/numerics.py).

Stage 1 sums |p|^2 and |update|^2 per tensor in float64 (as the reference's norms) and writes
nothing else; stage 2 recomputes the update from the same old moments with the same code (same
bits), applies the trust ratio and stores p and the moments. Recomputing instead of storing the
moments in stage 1 reads the grad once more (fp32: 48 B/param for the two stages instead of 44)
but keeps the update the reference's in every dtype: from stored fp16/bf16 moments it would be
computed from their rounding, not from the fp32 values the reference uses.
"""
from collections import namedtuple

import triton
import triton.language as tl

from fusedopt.kernels.numerics import div_rn, load_state, power, sqrt_rn, store_state

Columns = namedtuple("Columns", "lr weight_decay beta1 beta2 eps")
Flags = namedtuple("Flags",
                   "bias_correction grad_averaging trust_clip always_adapt decoupled maximize")


@triton.jit
def prepare(hrow, step, C: tl.constexpr, F: tl.constexpr):
    lr, wd = tl.load(hrow + C.lr), tl.load(hrow + C.weight_decay)
    beta1, beta2, eps = tl.load(hrow + C.beta1), tl.load(hrow + C.beta2), tl.load(hrow + C.eps)
    t = (step + 1.0).to(tl.float64)     # the counter after this step, incremented in float32
    bias_correction1, bias_correction2 = tl.full((), 1.0, tl.float64), tl.full((), 1.0, tl.float64)
    if F.bias_correction:
        bias_correction1, bias_correction2 = 1.0 - power(beta1, t), 1.0 - power(beta2, t)
    beta3 = tl.full((), 1.0, tl.float64)
    if F.grad_averaging:
        beta3 = 1.0 - beta1
    return lr, wd, beta1, beta2, eps, beta3, bias_correction1, sqrt_rn(bias_correction2)


@triton.jit
def _moments(p, g, s, offs, mask, x, F: tl.constexpr, CT: tl.constexpr):
    """The new moments and the update direction, from the stored moments."""
    lr, wd, beta1, beta2, eps, beta3, bias_correction1, bias_correction2_sqrt = x
    if not F.decoupled:
        if wd != 0:                     # apex's adam_w_mode=False: L2 into the moments
            g = g + wd.to(CT) * p
    m = load_state(s[0], offs, mask, CT)
    m = m * beta1.to(CT) + beta3.to(CT) * g
    v = load_state(s[1], offs, mask, CT)
    v = v * beta2.to(CT) + (1.0 - beta2).to(CT) * g * g
    denom = div_rn(sqrt_rn(v), bias_correction2_sqrt.to(CT)) + eps.to(CT)
    u = div_rn(div_rn(m, bias_correction1.to(CT)), denom)
    if F.decoupled:
        if wd != 0:
            u = u + wd.to(CT) * p
    return m, v, u


@triton.jit
def sums(p, g, s, offs, mask, x, F: tl.constexpr, CT: tl.constexpr):
    m, v, u = _moments(p, g, s, offs, mask, x, F, CT)
    p64, u64 = p.to(tl.float64), u.to(tl.float64)
    return p64 * p64, u64 * u64


@triton.jit
def update(p, g, s, offs, mask, x, totals, F: tl.constexpr, S: tl.constexpr,
           CT: tl.constexpr):
    lr, wd = x[0], x[1]
    m, v, u = _moments(p, g, s, offs, mask, x, F, CT)
    weight_norm, update_norm = tl.sqrt(totals[0]), tl.sqrt(totals[1])   # fp64 sqrt is IEEE
    both = (weight_norm > 0) & (update_norm > 0)
    ratio = tl.where(both, weight_norm / tl.where(both, update_norm, 1.0), 1.0)   # no 0 / 0
    if F.trust_clip:
        ratio = tl.minimum(ratio, 1.0)
    if not F.always_adapt:
        ratio = tl.where(wd != 0, ratio, 1.0)
    store_state(s[0], offs, mask, m, S)
    store_state(s[1], offs, mask, v, S)
    return p + (-lr).to(CT) * (u * ratio.to(CT))
