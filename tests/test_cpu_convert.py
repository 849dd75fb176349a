"""The CPU kernels' fp16/bf16 conversions, bit for bit, at every kernel level, through the public
optimizer (FusedSGD on the cpu backend) with steps that change nothing but the rounding:

- lr = 0, zero grads, master weights: the param becomes the rounding of its fp32 master, so any
  fp32 value can be rounded by the kernels' narrowing (master values set by hand);
- lr = 0, zero grads, no master: the param is widened and narrowed again (round trip);
- lr = 1, zero params: the param becomes -grad, so every grad value is widened.

Oracles: round-to-nearest-even as c10 writes it (bf16; also checked against torch's own
`.to(torch.bfloat16)`) and numpy's float16 cast (fp16), both independent of the kernels.
NaN: bf16 rounds every NaN to 0x7FC0, c10's choice, at every level. fp16 keeps the NaN's sign
and may keep its payload (F16C does, c10's portable conversion does not); torch itself gives
different NaN bits for one op at different lengths (Note [bf16 rounding] in vec_avx2.h), so
NaN bits beyond these are not part of the contract.
Positions: one long tensor (the vector loops), then the same values cut into tensors of 7, 15,
31, 61 and 1037 elements, so values also land in each level's shorter loops and scalar tail.
"""
import numpy as np
import pytest
import torch

import fusedopt
from fusedopt.backends import cpu as cpu_backend

C = cpu_backend._extension() if cpu_backend.unavailable_reason() is None else None
pytestmark = pytest.mark.skipif(C is None, reason=f"cpu backend: {cpu_backend.unavailable_reason()}")

LEVELS = ["scalar", "avx2", "avx512"]
ORDER = {name: i for i, name in enumerate(LEVELS)}
BEST = C.cpu_capability() if C is not None else "scalar"
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUTS = (7, 15, 31, 61, 1037)


@pytest.fixture(params=LEVELS)
def level(request, monkeypatch):
    monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", request.param)
    expected = min(request.param, BEST, key=ORDER.get)
    assert C.cpu_capability() == expected
    return expected


def pieces(values, layout):
    """The values as one tensor, or cut into tensors of the CUTS lengths in turn."""
    if layout == "long":
        return [values.clone()]
    out, i, k = [], 0, 0
    while i < values.numel():
        n = CUTS[k % len(CUTS)]
        out.append(values[i:i + n].clone())
        i, k = i + n, k + 1
    return out


def bits16(t):
    return t.view(torch.int16).to(torch.int64) & 0xFFFF


def f32_from_bits(u):
    return u.to(torch.int64).to(torch.int32).view(torch.float32)   # wraps bits >= 2^31


def bf16_rne(x):
    """c10::detail::round_to_nearest_even on fp32 bits (NaN -> 0x7FC0)."""
    u = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return torch.where(x.isnan(), torch.full_like(r, 0x7FC0), r)


def fp16_rne(x):
    with np.errstate(over="ignore"):   # values past 65520 round to inf, as they must
        return torch.from_numpy(x.numpy().astype(np.float16).view(np.uint16).astype(np.int64))


def rounding_inputs(name):
    """fp32 values whose rounding to the dtype is hard: ties either way, one fp32 ulp around
    them, subnormals of both formats, overflow to inf, inf, NaN with payloads and signs."""
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 1 << 32, (1 << 16,), generator=g, dtype=torch.int64)
    if name == "bf16":   # every bf16 value, with the low halves that decide its rounding
        high = torch.arange(1 << 16, dtype=torch.int64) << 16
        low = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
        return f32_from_bits(torch.cat([(high[:, None] | low).flatten(), rand]))
    # fp16: every finite fp16 value, the midpoints to the next one up and their fp32 neighbours
    h = torch.arange(1 << 16, dtype=torch.int64)
    v = torch.from_numpy(h.numpy().astype(np.uint16).view(np.float16).astype(np.float32))
    finite = v[v.isfinite() & (v.abs() < 65504)]   # 65504's midpoint to inf is among `special`
    up = torch.from_numpy(np.nextafter(finite.numpy().astype(np.float16), np.float16(np.inf))
                          .astype(np.float32))
    nxt = torch.where(finite >= 0, up, torch.from_numpy(
        np.nextafter(finite.numpy().astype(np.float16), np.float16(-np.inf)).astype(np.float32)))
    mid = ((finite.double() + nxt.double()) / 2).float()   # exact: 12 significant bits
    inf = torch.tensor(float("inf"))
    near = torch.cat([mid, torch.nextafter(mid, inf), torch.nextafter(mid, -inf)])
    special = torch.tensor([65504.0, 65519.99, 65520.0, 1e-45, -1e-45, 2.0 ** -25, 2.0 ** -24,
                            3 * 2.0 ** -26, 1e-38, -inf, inf, 0.0, -0.0])
    return torch.cat([v, near[near.isfinite()], special, f32_from_bits(rand),
                      f32_from_bits(torch.tensor([0x7F800001, 0xFF800001, 0x7FC12345, 0xFFFFFFFF,
                                                  0x7FA00000]))])


def sgd_steps(params, lr, master, grads=None):
    """One step (two with master weights: the first makes the masters) of plain SGD."""
    opt = fusedopt.FusedSGD(params, lr=lr, backend="cpu", master_weights=master)
    for i, p in enumerate(params):
        p.grad = torch.zeros_like(p) if grads is None else grads[i]
    opt.step()
    return opt


def assert_bits(got, expected, inputs, what):
    bad = (got != expected).nonzero().flatten()
    assert bad.numel() == 0, (
        f"{what}: {bad.numel()} of {got.numel()} differ; first inputs "
        f"{[hex(int(b)) for b in inputs.view(-1)[bad[:5]].tolist()]} gave "
        f"{[hex(int(b)) for b in got[bad[:5]].tolist()]}, expected "
        f"{[hex(int(b)) for b in expected[bad[:5]].tolist()]}")


def test_oracles_agree_with_torch():
    """The bf16 formula is torch's rounding (non-NaN), and numpy's fp16 cast is torch's."""
    x = rounding_inputs("bf16")
    ok = ~x.isnan()
    assert torch.equal(bf16_rne(x)[ok], bits16(x.to(torch.bfloat16))[ok])
    y = rounding_inputs("fp16")
    ok = ~y.isnan()
    assert torch.equal(fp16_rne(y)[ok], bits16(y.to(torch.float16))[ok])


@pytest.mark.parametrize("layout", ["long", "cut"])
@pytest.mark.parametrize("name", list(LOW))
def test_rounding_of_fp32_values(level, name, layout):
    """The param written from its fp32 master is the master's round-to-nearest-even."""
    dtype = LOW[name]
    x = rounding_inputs(name)
    params = pieces(torch.zeros(x.numel(), dtype=dtype), layout)
    opt = sgd_steps(params, 0.0, True)
    masters = [opt.state[p]["master_param"] for p in params]
    for m, v in zip(masters, pieces(x, layout)):
        m.copy_(v)
    opt.step()
    got = bits16(torch.cat(params))
    nan = x.isnan()
    kept = torch.cat(masters)
    assert torch.equal(kept[~nan].view(torch.int32), x[~nan].view(torch.int32)) and \
        kept[nan].isnan().all(), f"{level}: masters changed by an lr=0 step"   # sNaN -> qNaN
    expected = bf16_rne(x) if name == "bf16" else fp16_rne(x)
    assert_bits(got[~nan], expected[~nan], x.view(torch.int32)[~nan], f"{level} {name}")
    if name == "bf16":
        assert (got[nan] == 0x7FC0).all(), f"{level}: bf16 NaN is not 0x7FC0"
    else:
        got_nan = got[nan]
        assert ((got_nan & 0x7C00) == 0x7C00).all() and ((got_nan & 0x3FF) != 0).all()
        assert torch.equal(got_nan >> 15, (x[nan].view(torch.int32) < 0).to(torch.int64))


@pytest.mark.parametrize("layout", ["long", "cut"])
@pytest.mark.parametrize("name", list(LOW))
def test_every_value_round_trips(level, name, layout):
    """Every fp16/bf16 bit pattern, widened and narrowed again by an lr=0 step, comes back
    (NaN as above); every grad pattern is widened exactly (an lr=1 step from 0 gives -grad)."""
    dtype = LOW[name]
    every = torch.arange(1 << 16, dtype=torch.int64).to(torch.int16).view(dtype)
    nan = every.isnan()
    params = pieces(every, layout)
    sgd_steps(params, 0.0, False)
    got = bits16(torch.cat(params))
    want = bits16(every)
    assert_bits(got[~nan], want[~nan], want[~nan], f"{level} {name} round trip")
    if name == "bf16":
        assert (got[nan] == 0x7FC0).all()
    else:
        assert torch.equal(got[nan] >> 15, want[nan] >> 15) and torch.cat(params)[nan].isnan().all()

    grads = pieces(every, layout)
    params = [torch.zeros_like(g) for g in grads]
    sgd_steps(params, 1.0, False, grads)
    got = bits16(torch.cat(params))
    want = torch.where(want & 0x7FFF == 0, 0, want ^ 0x8000)   # -g; fma(+-0, -1, +0) is +0
    assert_bits(got[~nan], want[~nan], bits16(every)[~nan], f"{level} {name} grad widening")
    assert torch.cat(params)[nan].isnan().all()
