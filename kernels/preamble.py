"""The one update kernel of every algorithm: this preamble, with the algorithm's block math
plugged in as constexpr functions (Note [algorithm as data], docs/internals.md).

Note [one launch per bucket]: a bucket's tensors are described once, on its device, by
- ``meta``: int64 [T, L.meta_cols], one row per tensor: numel, group row, the addresses of the
  param, of its float32 step counter, of up to three state tensors and of the weights mode's
  tensor (its fp32 master copy or its compensation: Note [precision modes], docs/internals.md),
  0 where unused, and its rounding seed (Note [stochastic rounding]);
- ``grads``: int64 [T], the grad addresses, ``L.no_grad`` for a grad that is None this step (the
  only column that can change between steps: autograd may hand out new grad tensors);
- ``blocks``: int32 [B, 2], one (tensor, block-within-tensor) pair per program, tensor by tensor.
Program ``pid`` of a launch handles block ``blocks[pid]``, so one launch covers every tensor of
the bucket whatever their sizes; shapes, their number, lrs and group counts are table contents,
never kernel arguments that Triton would specialise on (so they never recompile). The host half
(rows, pairs, uploads, the launch-size rule) is fusedopt/backends/triton.py, which passes the
layout ``L`` and the algorithm's columns ``C`` and flags ``F`` as constexprs: nothing here imports
fusedopt's host modules.

An algorithm's kernel module (kernels/adam.py ...) holds ``Columns`` and ``Flags`` (namedtuples
of the descriptor's column and flag names it reads; the host fills in table indices and bools)
and three @triton.jit functions:
- ``prepare(hrow, step, C, F)``: per-tensor scalars from its table row ``hrow`` (float64) and
  its step counter ``step`` before this step (float32), as a tuple ``x``;
- ``update(p, g, s, offs, mask, x, totals, F, S, CT)``: the block math. ``p`` (the value the
  step starts from: Note [precision modes]) and ``g`` (scaled, negated for maximize) are in the
  compute dtype ``CT``, ``s`` the three states as ``(pointer, key)`` pairs, read and written
  with kernels/numerics.py's ``load_state`` and ``store_state`` (pointers of the state dtype
  ``S``; key: the state list's rounding key where the bucket rounds stochastically, else None);
  it stores its states and returns the new ``p``. ``totals`` is None, or for a two-stage
  algorithm the tensor's kSums (= 2) sums from ``sums``;
- two-stage algorithms only (Note [two stages], csrc/algorithms.h), ``sums(p, g, s, offs, mask,
  x, F, CT)``: the two per-element float64 terms whose per-tensor totals stage 2 reads.
"""
import triton
import triton.language as tl

from fusedopt.kernels.numerics import load_grad, rounded, rounding_key


@triton.jit
def locate(blocks, pid):
    """(tensor index, block within it) of program ``pid``."""
    t = tl.load(blocks + 2 * pid)
    b = tl.load(blocks + 2 * pid + 1)
    return t, b


@triton.jit
def typed(address, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """An int64 address as a DTYPE pointer. ALIGNED (the caller checked, on the device, that the
    addresses it walks are multiples of 16 bytes: ``aligned16``) lets Triton emit 16-byte vector
    loads/stores; without the hint a pointer read from memory gets 4-byte ones (checked in the
    PTX of an sm_90 build)."""
    ptr = address.to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def aligned16(a, b, c, d, e):
    """Every one of these addresses (0 for an unused slot) is a multiple of 16 bytes.

    Note [alignment per tensor]: decided per tensor, on the device, from the addresses the
    kernel reads anyway, like the CUDA engine's per-chunk check: one misaligned tensor (a view at
    an odd offset) walks with scalar accesses alone, every other tensor of the launch keeps its
    vector accesses, and alignment never enters a kernel's compile-time key (no second variant).
    """
    return ((a | b | c | d | e) % 16) == 0


@triton.jit
def skipped(found_inf):
    """found_inf non-zero: the launch touches nothing (decided on device, no host sync)."""
    skip = False
    if found_inf is not None:
        skip = tl.load(found_inf) != 0
    return skip


@triton.jit
def last_block(counters, t, n, BLOCK: tl.constexpr):
    """Count this block of tensor ``t`` done; True for the tensor's last block to finish, which
    must re-arm the counter (store 0) for the next launch (a captured CUDA graph replays it).

    Note [step in one launch]: every block of a tensor reads the old step counter at its start,
    so none may write it early. The acq_rel atomic orders each block's reads (and its stores of
    partial sums) before its increment, hence the block that sees count == blocks-1 is the last
    reader and sees every other block's partials.
    """
    num_blocks = tl.maximum((n + BLOCK - 1) // BLOCK, 1)
    # every thread of this program is done with its reads and stores before it is counted:
    # without the barrier a fast warp's increment could let the last block's store overtake a
    # slow warp's read of the same program
    tl.debug_barrier()
    return tl.atomic_add(counters + t, 1) == num_blocks - 1


@triton.jit
def _block(p_address, g_address, s_addresses, keys, extra_address, ALIGNED: tl.constexpr, offs,
           mask, x, totals, inv_scale, clip_coef, partial, UPDATE: tl.constexpr,
           SUMS: tl.constexpr, F: tl.constexpr, STAGE: tl.constexpr, DTYPE: tl.constexpr,
           S: tl.constexpr, CT: tl.constexpr, WEIGHTS: tl.constexpr):
    """One block: the grad and the value the step starts from (Note [precision modes]: the
    master, the param plus its compensation, or the param), then the algorithm's math; stage 1
    stores the block's two partial sums at ``partial``, the others store the param (and the
    master, which the param then only receives rounded: Note [master copy]; or the compensation,
    what that rounding lost)."""
    g = load_grad(typed(g_address, DTYPE, ALIGNED), offs, mask, inv_scale, clip_coef,
                  F.maximize, CT)
    p_ptr = typed(p_address, DTYPE, ALIGNED)
    if WEIGHTS == 1:                    # master: the param is only written
        extra_ptr = typed(extra_address, tl.float32, ALIGNED)
        p = tl.load(extra_ptr + offs, mask=mask)
    else:
        extra_ptr = typed(extra_address, DTYPE, ALIGNED)
        p = tl.load(p_ptr + offs, mask=mask).to(CT)
        if WEIGHTS == 2:                # kahan: plus the compensation, in fp32
            p = p + tl.load(extra_ptr + offs, mask=mask).to(CT)
    a0, a1, a2 = s_addresses
    s = ((typed(a0, S, ALIGNED), keys[0]), (typed(a1, S, ALIGNED), keys[1]),
         (typed(a2, S, ALIGNED), keys[2]))
    if STAGE == 1:
        u, w = SUMS(p, g, s, offs, mask, x, F, CT)
        if mask is not None:            # masked lanes loaded nothing defined
            u = tl.where(mask, u, 0.0)
            w = tl.where(mask, w, 0.0)
        tl.store(partial, tl.sum(u, 0))
        tl.store(partial + 1, tl.sum(w, 0))
    else:
        p = UPDATE(p, g, s, offs, mask, x, totals, F, S, CT)
        if WEIGHTS == 1:
            tl.store(extra_ptr + offs, p, mask=mask)
        rounded_p = rounded(p, DTYPE)
        tl.store(p_ptr + offs, rounded_p, mask=mask)
        if WEIGHTS == 2:
            tl.store(extra_ptr + offs, rounded(p - rounded_p.to(CT), DTYPE), mask=mask)


@triton.jit
def _total(partials, first, num_blocks, out, BLOCK: tl.constexpr):
    """Sum of ``partials[first : first + num_blocks]`` into ``out``: lane j adds partials j,
    j + BLOCK, ... in block order, then a tree sum of the lanes. Fixed by the bucket's block
    table, so a step is reproducible bit for bit (no float atomics anywhere)."""
    acc = tl.zeros([BLOCK], tl.float64)
    i = 0
    while i < num_blocks:      # a while loop: see norm.py
        idx = i + tl.arange(0, BLOCK)
        acc += tl.load(partials + (first + idx) * 2, mask=idx < num_blocks, other=0.0)
        i += BLOCK
    tl.store(out, tl.sum(acc, 0))


# Every non-constexpr argument is a pointer whose alignment Triton would otherwise fold into the
# cache key; they are read as scalars, so specialising on them buys nothing.
@triton.jit(do_not_specialize=["blocks", "meta", "grads", "counters", "hp", "partials", "totals",
                               "inv_scale", "clip_coef", "found_inf"])
def update_kernel(blocks, meta, grads, counters, hp, partials, totals, inv_scale, clip_coef,
                  found_inf, PREPARE: tl.constexpr, UPDATE: tl.constexpr, SUMS: tl.constexpr,
                  C: tl.constexpr, F: tl.constexpr, L: tl.constexpr, STAGE: tl.constexpr,
                  DTYPE: tl.constexpr, S: tl.constexpr, CT: tl.constexpr,
                  WEIGHTS: tl.constexpr, SR: tl.constexpr, BLOCK: tl.constexpr):
    """STAGE 0: a one-stage algorithm's step. Note [two stages] (csrc/algorithms.h): STAGE 1
    stores each block's kSums = 2 partial sums in ``partials`` (float64 [B, 2]) and the tensor's
    last block adds them up into ``totals`` (float64 [T, 2]); STAGE 2 is the step, reading the
    totals. Only the updating stage advances the step counters.

    DTYPE is the params' dtype, S the states', WEIGHTS the bucket's weights mode (0 plain, 1
    master, 2 kahan: Note [precision modes]); SR: the states are written with stochastic
    rounding, keyed per tensor and state list from its seed and the counter after this step,
    computed here from the counter on the device (no host sync)."""
    if skipped(found_inf):
        return
    pid = tl.program_id(0)
    t, b = locate(blocks, pid)
    g_address = tl.load(grads + t)
    if g_address == L.no_grad:       # grad is None: no state change, no step (as torch)
        return
    row = meta + t * L.meta_cols
    n = tl.load(row + L.numel)
    step_ptr = tl.load(row + L.step).to(tl.pointer_type(tl.float32))
    step = tl.load(step_ptr)         # float32 like torch's state['step']
    x = PREPARE(hp + tl.load(row + L.group) * L.hp_cols, step, C, F)
    keys = (None, None, None)
    if SR:
        seed = tl.load(row + L.seed).to(tl.uint32)
        counter = (step + 1.0).to(tl.uint32)
        keys = (rounding_key(seed, counter, 0), rounding_key(seed, counter, 1),
                rounding_key(seed, counter, 2))
    tensor_totals = None
    if STAGE == 2:
        tensor_totals = (tl.load(totals + 2 * t), tl.load(totals + 2 * t + 1))
    p_address, extra_address = tl.load(row + L.param), tl.load(row + L.extra)
    s = (tl.load(row + L.states), tl.load(row + L.states + 1), tl.load(row + L.states + 2))
    partial = None
    if STAGE == 1:
        partial = partials + 2 * pid
    offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # Full blocks run unmasked: a mask built from a numel read from memory has unknown
    # divisibility, which would forbid the 16-byte vector accesses (Note [alignment per tensor]).
    if b.to(tl.int64) * BLOCK + BLOCK <= n:
        # a | b is a multiple of 16 iff both are: one argument covers the last state and extra
        if aligned16(g_address, p_address, s[0], s[1], s[2] | extra_address):
            _block(p_address, g_address, s, keys, extra_address, True, offs, None, x,
                   tensor_totals, inv_scale, clip_coef, partial, UPDATE, SUMS, F, STAGE, DTYPE,
                   S, CT, WEIGHTS)
        else:
            _block(p_address, g_address, s, keys, extra_address, False, offs, None, x,
                   tensor_totals, inv_scale, clip_coef, partial, UPDATE, SUMS, F, STAGE, DTYPE,
                   S, CT, WEIGHTS)
    else:
        _block(p_address, g_address, s, keys, extra_address, False, offs, offs < n, x,
               tensor_totals, inv_scale, clip_coef, partial, UPDATE, SUMS, F, STAGE, DTYPE, S,
               CT, WEIGHTS)
    if last_block(counters, t, n, BLOCK):
        if STAGE == 1:
            num_blocks = tl.maximum((n + BLOCK - 1) // BLOCK, 1)
            _total(partials, pid - b, num_blocks, totals + 2 * t, BLOCK)
            _total(partials + 1, pid - b, num_blocks, totals + 2 * t + 1, BLOCK)
        else:
            tl.store(step_ptr, step + 1.0)
        tl.store(counters + t, 0)
