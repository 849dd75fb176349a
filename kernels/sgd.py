"""SGD (momentum, dampening, nesterov): the block math of kernels/preamble.py's kernel.

The math is torch.optim.sgd._single_tensor_sgd's in the compute dtype (Note [compute precision],
kernels/numerics.py). Seeded-buffer rule (docs/internals.md): a tensor whose step counter is
still 0 seeds its momentum buffer with the grad (torch's ``clone(grad)``); later steps blend.
"""
from collections import namedtuple

import triton
import triton.language as tl

from fusedopt.kernels.numerics import load_state, store_state

Columns = namedtuple("Columns", "lr weight_decay momentum dampening")
Flags = namedtuple("Flags", "momentum nesterov maximize")     # momentum: buffers kept


@triton.jit
def prepare(hrow, step, C: tl.constexpr, F: tl.constexpr):
    return (tl.load(hrow + C.lr), tl.load(hrow + C.weight_decay), tl.load(hrow + C.momentum),
            tl.load(hrow + C.dampening), step == 0)


@triton.jit
def momentum_step(d, buf_state, offs, mask, momentum, dampening, seed, NESTEROV: tl.constexpr,
                  S: tl.constexpr, CT: tl.constexpr):
    """torch's momentum buffer (SGD's, and LARS's after its local lr): returns the direction.
    On the seeding step the old buffer (zeros) is read but discarded by the select, so a NaN left
    in it cannot leak in; 4 extra bytes per fp32 element on that step only."""
    buf = load_state(buf_state, offs, mask, CT)
    buf = tl.where(seed, d, buf * momentum.to(CT) + (1.0 - dampening).to(CT) * d)
    store_state(buf_state, offs, mask, buf, S)
    if NESTEROV:
        d = d + momentum.to(CT) * buf
    else:
        d = buf
    return d


@triton.jit
def update(p, g, s, offs, mask, x, totals, F: tl.constexpr, S: tl.constexpr,
           CT: tl.constexpr):
    lr, wd, momentum, dampening, seed = x
    if wd != 0:
        g = g + wd.to(CT) * p
    if F.momentum:
        g = momentum_step(g, s[0], offs, mask, momentum, dampening, seed, F.nesterov, S, CT)
    return p + (-lr).to(CT) * g
