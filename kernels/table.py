"""The pointer table every fusedopt Triton kernel walks, and the launch-size rule.

Note [one launch per bucket]: a bucket's tensors are described once, on its device, by
- ``meta``: int64 [T, META_COLS], one row per tensor: numel, group row, address of the param,
  of its float32 step counter, of up to three state tensors and of its fp32 master copy
  (Note [master copy] in fusedopt/optimizer.py), 0 where unused;
- ``grads``: int64 [T], the grad addresses, NO_GRAD for a grad that is None this step (the only
  column that can change between steps: autograd may hand out new grad tensors);
- ``blocks``: int32 [B, 2], one (tensor, block-within-tensor) pair per program.
Program ``pid`` of a launch handles block ``blocks[pid]``, so one launch covers every tensor of
the bucket whatever their sizes; shapes, their number, lrs and group counts are table contents,
never kernel arguments that Triton would specialise on (so they never recompile).
"""
import torch
import triton
import triton.language as tl

from fusedopt import _engine

NUMEL, GROUP, PARAM, STEP, STATES, MASTER = 0, 1, 2, 3, 4, 7
# -1, not 0: torch gives 0-element tensors the address 0, and their step must still count.
NO_GRAD = -1
META_COLS = 8                 # 64-byte rows; STATES..STATES+2 hold Adam's m, v, max_v at most

# Launch-size rule (not autotuned: autotuning would re-run an in-place update while timing it and
# would change BLOCK, hence the block table, per device). One program moves BLOCK elements of
# every stream: 1024 fp32 elements over 4 warps = 8 per thread = two 16-byte loads per stream and
# thread (PTX of an sm_90 build: ld.global.v4.b32 on full blocks). Measured on an H200
# (bench/triton_blocks.py, fp32 AdamW, 500M params in 100 tensors, Triton 3.6, 2026-11-27):
#   BLOCK 1024, 4 warps: 4.84 ms, 128 registers, 4 programs/SM   <- the rule
#   BLOCK 2048, 4 warps: 6.00 ms, 242 registers, 2 programs/SM   (the rule before)
#   BLOCK 2048, 8 warps: 5.41 ms, 128 registers, 2 programs/SM
#   BLOCK 4096, 4 warps: 4.85 ms, 255 registers + 104 B spilled
# Registers grow with elements per thread, and 2 programs of 4 warps per SM left too few loads in
# flight. fp64 halves BLOCK to keep the bytes and registers per thread; fp16/bf16 keep 1024 and
# compute in fp32 registers. The last block of a tensor idles < BLOCK lanes (masked lanes move no
# bytes): for ResNet-50's 161 tensors, 25.6 M elements, at most 161 x 1023 = 0.6% of the lanes.
NUM_WARPS = 4
# Contract a*b+c into FMAs, as nvcc does by default (--fmad=true) for the cuda backend and torch's
# CUDA kernels. Pinned: Triton 3.10 turns its default off (and 3.9 warns when it is unset).
FP_FUSION = True


def block_size(dtype):
    return 512 if dtype == torch.float64 else 1024


def triton_dtype(dtype):
    return {torch.float32: tl.float32, torch.float64: tl.float64,
            torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def compute_dtype(dtype):
    """Note [compute precision]: fp64 params compute in fp64, every other dtype in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_pairs(numels, block, device):
    """The (tensor, block) pairs: ceil(n / block) per tensor, and one for an empty tensor, whose
    step counter still advances (torch counts a step of a param with a 0-element grad). Built
    with tensor ops: a 1 B-parameter bucket has ~490 K pairs."""
    counts = torch.tensor([max(1, -(-n // block)) for n in numels] or [1], dtype=torch.int64)
    tensor = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    pairs = torch.stack([tensor, torch.arange(len(tensor)) - first], 1).to(torch.int32)
    return upload(pairs, torch.int32, device), len(pairs) if numels else 0


def meta_row(numel, group, param=None, step=None, states=(), master=None):
    """One host row of ``meta``; a norm-only tensor leaves the addresses at 0."""
    row = [0] * META_COLS
    row[NUMEL], row[GROUP] = numel, group
    if param is not None:
        row[PARAM], row[STEP] = param.data_ptr(), step.data_ptr()
    for k, state in enumerate(states):
        row[STATES + k] = state.data_ptr()
    if master is not None:
        row[MASTER] = master.data_ptr()
    return row


def upload(values, dtype, device):
    """A non-empty host list or tensor on ``device`` without a host sync (through pinned
    memory: fusedopt._engine.upload)."""
    host = values.contiguous() if torch.is_tensor(values) else torch.tensor(values, dtype=dtype)
    return host if device.type == "cpu" else _engine.upload(host, device)


# ---- device helpers shared by the kernels ----------------------------------------------------

@triton.jit
def locate(blocks, pid):
    """(tensor index, first element of this program's block) for program ``pid``."""
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
def block_done(counters, t, n, step_ptr, new_step, BLOCK: tl.constexpr):
    """Count this block done; the tensor's last block to finish stores its new step counter.

    Note [step in one launch]: every block of a tensor reads the old counter at its start, so none
    may write it early. The acq_rel atomic orders each block's read before its increment, hence
    the block that sees count == blocks-1 is the last reader; it writes and re-arms the counter
    for the next launch (so a captured CUDA graph replays correctly).
    """
    num_blocks = tl.maximum((n + BLOCK - 1) // BLOCK, 1)
    # every thread of this program has read the old counter before it is counted done: without
    # the barrier a fast warp's increment could let the last block's store overtake a slow
    # warp's read of the same program
    tl.debug_barrier()
    if tl.atomic_add(counters + t, 1) == num_blocks - 1:
        tl.store(step_ptr, new_step)
        tl.store(counters + t, 0)


@triton.jit
def load_grad(g_ptr, offs, mask, inv_scale, clip_coef, MAXIMIZE: tl.constexpr,
              CT: tl.constexpr):
    """grad * inv_scale * clip_coef (that order: torch's unscale_ then clip), negated when
    maximizing, in the compute dtype. None factors are compiled out."""
    g = tl.load(g_ptr + offs, mask=mask).to(CT)
    if inv_scale is not None:
        g = g * tl.load(inv_scale).to(CT)
    if clip_coef is not None:
        g = g * tl.load(clip_coef).to(CT)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def skipped(found_inf):
    """found_inf non-zero: the launch touches nothing (decided on device, no host sync)."""
    skip = False
    if found_inf is not None:
        skip = tl.load(found_inf) != 0
    return skip


# Note [one return]: the device helpers end in a single return. Triton's compiler (unlike its
# interpreter) rejects a constexpr-guarded early return followed by another return.


@triton.jit
def sqrt_rn(x):
    """Correctly rounded square root, like torch's. Triton's tl.sqrt is approximate for fp32;
    tl.sqrt_rn takes fp32 only, and fp64 tl.sqrt lowers to the IEEE sqrt.rn.f64."""
    if x.dtype == tl.float64:
        root = tl.sqrt(x)
    else:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def div_rn(x, y):
    """Correctly rounded division, like torch's (Triton's fp32 ``/`` may be off by 2 ulp; fp64
    ``/`` is IEEE already, and tl.div_rn takes fp32 only)."""
    if x.dtype == tl.float64:
        quotient = x / y
    else:
        quotient = tl.div_rn(x, y)
    return quotient


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """fp32 -> DTYPE rounding to nearest even, like torch's copy_.

    bf16 is rounded by hand: Triton 3.9's interpreter truncates fp32 -> bf16 casts, which made
    bf16 Adam drift a bf16 ulp per step from torch; on a GPU the same integer ops equal
    cvt.rn.bf16.f32 at a few integer instructions per element, free in a memory-bound kernel.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(x != x, x.to(tl.bfloat16), out)   # NaN stays NaN (the sum could carry)
    else:
        out = x.to(DTYPE)
    return out
