"""Adam (L2 decay) and AdamW (decoupled decay): the block math of kernels/preamble.py's kernel.

The math is torch.optim.adam._single_tensor_adam's, operation by operation, in the compute dtype
(Note [compute precision], kernels/numerics.py).
"""
from collections import namedtuple

import triton
import triton.language as tl

from fusedopt.kernels.numerics import div_rn, load_state, power, sqrt_rn, store_state

Columns = namedtuple("Columns", "lr weight_decay beta1 beta2 eps")
Flags = namedtuple("Flags", "amsgrad maximize decoupled")


@triton.jit
def prepare(hrow, step, C: tl.constexpr, F: tl.constexpr):
    lr, wd = tl.load(hrow + C.lr), tl.load(hrow + C.weight_decay)
    beta1, beta2, eps = tl.load(hrow + C.beta1), tl.load(hrow + C.beta2), tl.load(hrow + C.eps)
    t = (step + 1.0).to(tl.float64)     # the counter after this step, incremented in float32
    step_size = lr / (1.0 - power(beta1, t))
    bias_correction2_sqrt = sqrt_rn(1.0 - power(beta2, t))
    return lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt


@triton.jit
def update(p, g, s, offs, mask, x, totals, F: tl.constexpr, S: tl.constexpr,
           CT: tl.constexpr):
    lr, wd, beta1, beta2, eps, step_size, bias_correction2_sqrt = x
    if wd != 0:
        if F.decoupled:
            p = p * (1.0 - lr * wd).to(CT)
        else:
            g = g + wd.to(CT) * p
    # exp_avg.lerp_(g, 1 - beta1), with torch's two-sided lerp formula (exact at both ends)
    m = load_state(s[0], offs, mask, CT)
    w = (1.0 - beta1).to(CT)
    m = tl.where(w < 0.5, m + w * (g - m), g - (g - m) * (1.0 - w))
    v = load_state(s[1], offs, mask, CT)
    v = v * beta2.to(CT) + (1.0 - beta2).to(CT) * g * g
    if F.amsgrad:
        vmax = load_state(s[2], offs, mask, CT)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)   # torch.maximum keeps NaN
        store_state(s[2], offs, mask, vmax, S)
        denom = div_rn(sqrt_rn(vmax), bias_correction2_sqrt.to(CT)) + eps.to(CT)
    else:
        denom = div_rn(sqrt_rn(v), bias_correction2_sqrt.to(CT)) + eps.to(CT)
    store_state(s[0], offs, mask, m, S)
    store_state(s[1], offs, mask, v, S)
    return p + (-step_size).to(CT) * div_rn(m, denom)
