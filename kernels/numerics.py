"""Element helpers every algorithm's block math shares: the scaled grad, torch's roundings, the
state loads and stores (Note [precision modes], docs/internals.md).

Note [compute precision]: fp64 params compute in fp64, every other dtype in fp32 (``CT``);
scalars derived from the hyper-parameters (float64 table cells) are formed in fp64 and rounded to
``CT`` where they meet a tensor, as torch rounds a Python float that meets a tensor.

Note [one return]: the device helpers end in a single return. Triton's compiler (unlike its
interpreter) rejects a constexpr-guarded early return followed by another return.
"""
import triton
import triton.language as tl


@triton.jit
def load_grad(g_ptr, offs, mask, inv_scale, clip_coef, MAXIMIZE: tl.constexpr,
              CT: tl.constexpr):
    """grad * inv_scale * clip_coef (that order: torch's unscale_ then clip), negated when
    maximizing, in the compute dtype, each factor rounded to it first (clip_coef may be float64
    for a float32 compute type: Note [norm dtype], fusedopt/backends/__init__.py; torch's mul_
    rounds it the same way). None factors are compiled out."""
    g = tl.load(g_ptr + offs, mask=mask).to(CT)
    if inv_scale is not None:
        g = g * tl.load(inv_scale).to(CT)
    if clip_coef is not None:
        g = g * tl.load(clip_coef).to(CT)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def power(beta, t):
    """beta ** t in fp64 as exp(t * log(beta)): the interpreter has no libdevice.pow. The relative
    error is ~|t * log(beta)| ulps, < 1e-13 for beta = 0.999 up to 1e5 steps; beta = 0 gives
    exp(-inf) = 0, as 0 ** t."""
    return tl.exp(t * tl.log(beta))


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
def sign(x):
    """torch.sign's formula, (0 < x) - (x < 0): sign(0) = sign(-0) = 0 and sign(NaN) = 0 (torch
    2.13 on CPU gives 0 for NaN too)."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


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


@triton.jit
def fmix32(h):
    """MurmurHash3's 32-bit finaliser on uint32 values (Note [stochastic rounding]): Triton's
    uint32 products wrap modulo 2^32, as the contract's arithmetic does."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def sr_mix(h):
    """fmix32's first round, the element hash (Note [stochastic rounding])."""
    h ^= h >> 16
    return h * 0x85EBCA6B


@triton.jit
def rounding_key(seed, t, k):
    """(key(seed, k), t * 0x9E3779B9) of Note [stochastic rounding]: state list ``k`` of a
    tensor with ``seed`` (uint32) at step ``t`` (uint32, the counter after this step's
    increment)."""
    # k as a uint32 tensor: fmix32 of a Python int would not wrap modulo 2^32
    return fmix32(seed ^ fmix32(seed * 0 + k)), t * 0x9E3779B9


@triton.jit
def stochastic_bf16(x, j, key):
    """fp32 ``x`` as bf16, rounded stochastically with bits(key, j, t) (Note [stochastic
    rounding]; ``key``: rounding_key's pair); ``j`` the elements' row-major indices (int64,
    taken modulo 2^32)."""
    r = (sr_mix((j.to(tl.uint32) * 0x9E3779B1) ^ key[0]) + key[1]) >> 16
    bits = (x.to(tl.uint32, bitcast=True) + r) >> 16
    bits = tl.where(x != x, 0x7FC0, bits)
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def load_state(state, offs, mask, CT: tl.constexpr):
    """A state (a ``(pointer, key)`` pair, kernels/preamble.py) widened to the compute dtype."""
    return tl.load(state[0] + offs, mask=mask).to(CT)


@triton.jit
def store_state(state, offs, mask, value, S: tl.constexpr):
    """``value`` into a state of dtype ``S``: rounded stochastically where the pair holds a key
    (S is then bf16, and ``offs`` are row-major indices: the walked tensors are contiguous in
    that mode), else to nearest."""
    ptr, key = state
    if key is None:
        out = rounded(value, S)
    else:
        out = stochastic_bf16(value, offs, key)
    tl.store(ptr + offs, out, mask=mask)
