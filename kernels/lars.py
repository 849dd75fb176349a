"""LARS (Note [LARS], docs/internals.md): the block math of kernels/preamble.py's kernel, in two
stages (Note [two stages], csrc/algorithms.h). Stage 1 sums |p|^2 and |g|^2 per tensor in float64
(as the reference's norms); stage 2 forms the local lr from them in float64 and steps SGD's
momentum buffer (kernels/sgd.py) with the scaled direction, as mmpretrain's LARS does.
"""
from collections import namedtuple

import triton
import triton.language as tl

from fusedopt.kernels.sgd import momentum_step

Columns = namedtuple("Columns", "lr weight_decay momentum dampening eps eta exclude")
Flags = namedtuple("Flags", "momentum nesterov maximize")     # momentum: buffers kept


@triton.jit
def prepare(hrow, step, C: tl.constexpr, F: tl.constexpr):
    return (tl.load(hrow + C.lr), tl.load(hrow + C.weight_decay), tl.load(hrow + C.momentum),
            tl.load(hrow + C.dampening), tl.load(hrow + C.eps), tl.load(hrow + C.eta),
            tl.load(hrow + C.exclude), step == 0)


@triton.jit
def sums(p, g, s, offs, mask, x, F: tl.constexpr, CT: tl.constexpr):
    p64, g64 = p.to(tl.float64), g.to(tl.float64)
    return p64 * p64, g64 * g64


@triton.jit
def update(p, g, s, offs, mask, x, totals, F: tl.constexpr, S: tl.constexpr,
           CT: tl.constexpr):
    lr, wd, momentum, dampening, eps, eta, exclude, seed = x
    weight_norm, grad_norm = tl.sqrt(totals[0]), tl.sqrt(totals[1])   # fp64 sqrt is IEEE
    adapt = (exclude == 0) & (weight_norm != 0) & (grad_norm != 0)
    denom = tl.where(adapt, grad_norm + wd * weight_norm + eps, 1.0)     # no x / 0 (eps = 0)
    local_lr = tl.where(adapt, eta * weight_norm / denom, 1.0)
    d = (g + wd.to(CT) * p) * (lr * local_lr).to(CT)     # d_p.add(p, alpha=wd).mul(actual_lr)
    if F.momentum:
        d = momentum_step(d, s[0], offs, mask, momentum, dampening, seed, F.nesterov, S, CT)
    return p - d
