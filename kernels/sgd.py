"""SGD (momentum, dampening, nesterov, maximize) over every tensor of a bucket in one launch.

The math is torch.optim.sgd._single_tensor_sgd's in the compute dtype (Note [compute precision]).
Seeded-buffer rule (docs/internals.md): a tensor whose step counter is still 0 seeds its momentum
buffer with the grad (torch's ``clone(grad)``); later steps blend. The counter advances either way.
MASTER: the fp32 master copy is read and written in place of the param, which only receives its
rounding (Note [master copy] in fusedopt/optimizer.py).
"""
import triton
import triton.language as tl

from fusedopt import _hparams
from fusedopt.kernels.table import (GROUP, MASTER, META_COLS, NO_GRAD, NUMEL, PARAM, STATES,
                                    STEP, aligned16, block_done, load_grad, locate, rounded,
                                    skipped, typed)

_LR = tl.constexpr(_hparams.LR)
_WD = tl.constexpr(_hparams.WEIGHT_DECAY)
_MOMENTUM = tl.constexpr(_hparams.MOMENTUM)
_DAMPENING = tl.constexpr(_hparams.DAMPENING)
_COLS = tl.constexpr(_hparams.NUM_COLS)
_META_COLS, _NO_GRAD = tl.constexpr(META_COLS), tl.constexpr(NO_GRAD)
_NUMEL, _GROUP, _PARAM = tl.constexpr(NUMEL), tl.constexpr(GROUP), tl.constexpr(PARAM)
_STEP, _STATES, _MASTER = tl.constexpr(STEP), tl.constexpr(STATES), tl.constexpr(MASTER)


# Pointers are read as scalars: alignment specialisation would only add cache keys (adam.py).
@triton.jit(do_not_specialize=["blocks", "meta", "grads", "counters", "hp", "inv_scale",
                               "clip_coef", "found_inf"])
def sgd_kernel(blocks, meta, grads, counters, hp, inv_scale, clip_coef, found_inf,
               DTYPE: tl.constexpr, CT: tl.constexpr, HAS_BUFFER: tl.constexpr,
               NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, MASTER: tl.constexpr,
               BLOCK: tl.constexpr):
    if skipped(found_inf):
        return
    t, b = locate(blocks, tl.program_id(0))
    g_address = tl.load(grads + t)
    if g_address == _NO_GRAD:       # grad is None: no state change, no step (as torch)
        return
    row = meta + t * _META_COLS
    n = tl.load(row + _NUMEL)
    hrow = hp + tl.load(row + _GROUP) * _COLS
    lr, wd = tl.load(hrow + _LR), tl.load(hrow + _WD)
    momentum, dampening = tl.load(hrow + _MOMENTUM), tl.load(hrow + _DAMPENING)
    step_ptr = tl.load(row + _STEP).to(tl.pointer_type(tl.float32))
    step = tl.load(step_ptr)

    p_address, buf_address = tl.load(row + _PARAM), tl.load(row + _STATES)
    master_address = tl.load(row + _MASTER)         # 0 without a master copy
    offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if b.to(tl.int64) * BLOCK + BLOCK <= n:          # unmasked full block: see adam.py
        if aligned16(g_address, p_address, buf_address, master_address, 0):
            _sgd_block(typed(p_address, DTYPE, True), typed(g_address, DTYPE, True),
                       typed(buf_address, DTYPE, True), typed(master_address, tl.float32, True),
                       offs, None, inv_scale, clip_coef, lr, wd, momentum, dampening, step == 0,
                       DTYPE, CT, HAS_BUFFER, NESTEROV, MAXIMIZE, MASTER)
        else:
            _sgd_block(typed(p_address, DTYPE, False), typed(g_address, DTYPE, False),
                       typed(buf_address, DTYPE, False), typed(master_address, tl.float32, False),
                       offs, None, inv_scale, clip_coef, lr, wd, momentum, dampening, step == 0,
                       DTYPE, CT, HAS_BUFFER, NESTEROV, MAXIMIZE, MASTER)
    else:
        _sgd_block(typed(p_address, DTYPE, False), typed(g_address, DTYPE, False),
                   typed(buf_address, DTYPE, False), typed(master_address, tl.float32, False),
                   offs, offs < n, inv_scale, clip_coef, lr, wd, momentum, dampening, step == 0,
                   DTYPE, CT, HAS_BUFFER, NESTEROV, MAXIMIZE, MASTER)
    block_done(counters, t, n, step_ptr, step + 1.0, BLOCK)


@triton.jit
def _sgd_block(p_ptr, g_ptr, buf_ptr, master_ptr, offs, mask, inv_scale, clip_coef, lr, wd,
               momentum, dampening, seed, DTYPE: tl.constexpr, CT: tl.constexpr,
               HAS_BUFFER: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
               MASTER: tl.constexpr):
    g = load_grad(g_ptr, offs, mask, inv_scale, clip_coef, MAXIMIZE, CT)
    if MASTER:
        p = tl.load(master_ptr + offs, mask=mask)
    else:
        p = tl.load(p_ptr + offs, mask=mask).to(CT)
    if wd != 0:
        g = g + wd.to(CT) * p
    if HAS_BUFFER:
        # On the seeding step the old buffer (zeros) is read but discarded by the select, so a
        # NaN left in it cannot leak in; 4 extra bytes per fp32 element on that step only.
        buf = tl.load(buf_ptr + offs, mask=mask).to(CT)
        buf = tl.where(seed, g, buf * momentum.to(CT) + (1.0 - dampening).to(CT) * g)
        tl.store(buf_ptr + offs, rounded(buf, DTYPE), mask=mask)
        if NESTEROV:
            g = g + momentum.to(CT) * buf
        else:
            g = buf
    p = p + (-lr).to(CT) * g
    if MASTER:
        tl.store(master_ptr + offs, p, mask=mask)
    tl.store(p_ptr + offs, rounded(p, DTYPE), mask=mask)
