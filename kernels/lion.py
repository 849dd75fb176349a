"""Lion (Note [Lion], docs/internals.md): the block math of kernels/preamble.py's kernel, op for op
as lion-pytorch writes the paper's Algorithm 2, in the compute dtype (Note [compute precision],
kernels/numerics.py). The step counter only counts.
"""
from collections import namedtuple

import triton
import triton.language as tl

from fusedopt.kernels.numerics import load_state, sign, store_state

Columns = namedtuple("Columns", "lr weight_decay beta1 beta2")
Flags = namedtuple("Flags", "maximize")


@triton.jit
def prepare(hrow, step, C: tl.constexpr, F: tl.constexpr):
    return (tl.load(hrow + C.lr), tl.load(hrow + C.weight_decay), tl.load(hrow + C.beta1),
            tl.load(hrow + C.beta2))


@triton.jit
def update(p, g, s, offs, mask, x, totals, F: tl.constexpr, S: tl.constexpr,
           CT: tl.constexpr):
    lr, wd, beta1, beta2 = x
    p = p * (1.0 - lr * wd).to(CT)                   # decoupled decay; wd = 0 multiplies by 1
    m = load_state(s[0], offs, mask, CT)
    # x.add(g, alpha=a) is one fma in torch's vectorised CPU kernel and in nvcc's code for its
    # CUDA one; explicit, so the interpreter rounds as they do (Lion is held bitwise to them)
    p = p + (-lr).to(CT) * sign(tl.fma(g, (1.0 - beta1).to(CT), m * beta1.to(CT)))
    m = tl.fma(g, (1.0 - beta2).to(CT), m * beta2.to(CT))
    store_state(s[0], offs, mask, m, S)
    return p
