"""The CPU backend's precision modes (docs/internals.md, Note [precision modes] and Note
[stochastic rounding]) at every kernel level: states kept in another dtype than the params,
fp32 master copies, Kahan-compensated params, stochastically rounded bf16 states.

Oracle: fusedopt.backends.reference on an identical BucketSpec. The fp32 math of both differs by
at most an ulp in rare lanes (Note [torch's rounding] in csrc/cpu/adam.h; LARS's and LAMB's sums
in another order), which may round a stored fp16/bf16 value the other way: stored values are
held to one ulp of their dtype, fp32 ones to tests/tolerances.py. The rounding itself is held
bitwise where the fp32 math is exact (dyadic grads, betas of 1/2).
"""
import pytest
import torch

from fusedopt import _engine
from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import reference
from helpers import make_params, set_grads
from test_cpu_kernels import (C, LEVELS, ROWS, bucket_of, c_step, clone_spec, flags_word, hp_of,
                              level, parametrize_levels, run_backend)  # noqa: F401 (a fixture)
from tolerances import assert_close, assert_within_ulps

pytestmark = pytest.mark.skipif(C is None, reason="no cpu backend")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
PLAIN, MASTER, KAHAN = _engine.PLAIN, _engine.MASTER, _engine.KAHAN

# (id, param dtype, state dtype, weights mode, stochastic rounding): every (param, state) dtype
# pair the kernels are compiled for (Note [precision kernels], csrc/cpu/elementwise.h) beside
# fp32/fp64 ones, with each weights mode and rounding
MODES = [
    ("fp32-bf16", F32, BF16, PLAIN, False),
    ("fp32-bf16sr", F32, BF16, PLAIN, True),
    ("fp16-fp32", F16, F32, PLAIN, False),
    ("fp16-fp16-kahan", F16, F16, KAHAN, False),
    ("fp16-fp32-master", F16, F32, MASTER, False),
    ("fp16-bf16sr-kahan", F16, BF16, KAHAN, True),
    ("fp16-bf16-master", F16, BF16, MASTER, False),
    ("bf16-bf16-kahan", BF16, BF16, KAHAN, False),
    ("bf16-bf16sr", BF16, BF16, PLAIN, True),
    ("bf16-bf16sr-kahan", BF16, BF16, KAHAN, True),
    ("bf16-bf16sr-master", BF16, BF16, MASTER, True),
    ("bf16-fp32-master", BF16, F32, MASTER, False),
    ("bf16-fp32-kahan", BF16, F32, KAHAN, False),
]
MODE_IDS = [m[0] for m in MODES]

CONFIGS = [
    ("adam", dict()),
    ("adam", dict(amsgrad=True)),
    ("adam", dict(decoupled=True)),
    ("sgd", dict(momentum=True)),
    ("sgd", dict(momentum=True, nesterov=True)),
    ("lion", dict()),
    ("lars", dict(momentum=True)),
    ("lamb", dict(bias_correction=True, grad_averaging=True, decoupled=True)),
]
CONFIG_IDS = [f"{a}-" + "-".join(k for k, v in f.items() if v) for a, f in CONFIGS]

# 0, 1, odd, a transposed view (dense, not contiguous: stepped in place unless stochastically
# rounded), 70001 elements (two chunks, every loop of every level), and a strided slice (not
# dense: always stepped on contiguous copies)
SHAPES = [(0,), (1,), (33,), (7, 5), (70001,), (9, 6)]
TRANSPOSED = (3,)
SLICED = 5
STEPS = 6


def seeds_for(n):
    """One seed per param, the largest one included."""
    return [(0x9E3779B9 * (i + 1)) % (1 << 32) if i else (1 << 32) - 1 for i in range(n)]


def make_spec(algo, flags, mode, shapes=SHAPES, transposed=TRANSPOSED, sliced=SLICED):
    _, p_dtype, s_dtype, weights, stochastic = mode
    torch.manual_seed(0)
    params = make_params(shapes, p_dtype, transposed)
    if sliced is not None:
        base = torch.randn(shapes[sliced][0], 2 * shapes[sliced][1], dtype=torch.float64)
        params[sliced] = torch.nn.Parameter(base.to(p_dtype)[:, ::2])
    names = ALGORITHMS[algo].state_names(flags_word(algo, flags))
    spec = _engine.BucketSpec(torch.device("cpu"), p_dtype, (), weights=weights)
    spec.params = params
    spec.states = [[torch.zeros_like(p, dtype=s_dtype) for p in params] for _ in names]
    if weights == MASTER:
        spec.states.append([p.detach().float() for p in params])
    elif weights == KAHAN:
        spec.states.append([torch.zeros_like(p) for p in params])
    spec.steps = [torch.zeros(()) for _ in params]
    spec.group_index = [i % len(ROWS[algo]) for i in range(len(params))]
    spec.seeds = seeds_for(len(params)) if stochastic else []
    return spec, hp_of(ROWS[algo])


_REFERENCE_RUNS = {}


def reference_run(algo, flags, mode):
    key = (algo, tuple(flags.items()), mode[0])
    if key not in _REFERENCE_RUNS:
        spec, hp = make_spec(algo, flags, mode)
        _REFERENCE_RUNS[key] = run_backend(reference, spec, hp, algo, flags, steps=STEPS)
    return _REFERENCE_RUNS[key]


def assert_stored_close(actual, expected, what):
    """fp16/bf16 within one ulp of their dtype, fp32 to the tolerance table."""
    if actual.dtype in (F16, BF16):
        assert_within_ulps(actual, expected, 1.0, what)
    else:
        assert_close(actual, expected, what)


def compare(ours, theirs, where):
    for i, (a, b) in enumerate(zip(ours.params, theirs.params)):
        assert_stored_close(a.detach(), b.detach(), f"{where}: params[{i}]")
    for k, (mine, ref) in enumerate(zip(ours.states, theirs.states)):
        for i, (a, b) in enumerate(zip(mine, ref)):
            what = f"{where}: states[{k}][{i}]"
            if ours.weights == KAHAN and k == len(ours.states) - 1:
                # a compensation is what the param's rounding lost: held as p + c in fp32
                p, q = ours.params[i].detach().float(), theirs.params[i].detach().float()
                assert_close(p + a.float(), q + b.float(), what + " (param + compensation)")
            else:
                assert_stored_close(a, b, what)
    assert [s.item() for s in ours.steps] == [s.item() for s in theirs.steps], f"{where}: steps"


@parametrize_levels
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("algo,flags", CONFIGS, ids=CONFIG_IDS)
def test_step_matches_reference_backend(level, algo, flags, mode):
    theirs = reference_run(algo, flags, mode)
    spec, hp = make_spec(algo, flags, mode)
    ours = run_backend(C, spec, hp, algo, flags, steps=STEPS)
    compare(ours, theirs, f"{level} {mode[0]}")
    if mode[3] == MASTER:         # the param is its master's rounding
        for p, m in zip(ours.params, ours.states[-1]):
            assert torch.equal(p.detach(), m.to(p.dtype))


# ---- the rounding itself, bitwise ---------------------------------------------------------------
def dyadic_grads(specs, step):
    """Grads k/1024 for |k| < 200 on every spec (None on some steps): with betas of 1/2 and lr
    2^-4 every fp32 operation of SGD's and Adam's state updates is exact, so both backends
    round the same fp32 values."""
    set_grads([s.params for s in specs], step)
    for s in specs:
        for p in s.params:
            if p.grad is not None:
                gen = torch.Generator().manual_seed(step * 131 + p.numel())
                k = torch.randint(-200, 200, p.shape, generator=gen, dtype=torch.int64)
                p.grad.copy_(k.double() / 1024)


# SGD: buf = buf/2 + g, p -= buf/16 (the params exact too); Adam with amsgrad: m and v are
# means of halves, max(v) exact (states 0, 1 and 2: three keys); its params go through sqrt
BITWISE = [("sgd", dict(momentum=True), [(1 / 16, 0.0, 0.5, 0.0)]),
           ("adam", dict(amsgrad=True), [(1e-3, 0.0, 0.5, 0.5, 1e-8)])]


@parametrize_levels
@pytest.mark.parametrize("algo,flags,rows", BITWISE, ids=["sgd-momentum", "adam-amsgrad"])
def test_stochastic_rounding_is_bitwise_the_reference(level, algo, flags, rows):
    mode = ("fp32-bf16sr", F32, BF16, PLAIN, True)
    spec, _ = make_spec(algo, flags, mode)
    for p in spec.params:        # dyadic params: SGD's p -= lr * buf is exact as well
        p.data.copy_((p.detach().double() * 64).round() / 64)
    spec.group_index = [0] * len(spec.params)
    hp = hp_of(rows)
    theirs = clone_spec(spec)
    bucket = bucket_of(spec)
    for step in range(STEPS):
        dyadic_grads([spec, theirs], step)
        c_step(bucket, hp, algo, flags)
        reference.step(theirs, hp, ALGORITHMS[algo], flags_word(algo, flags))
    rounded = 0
    for k, (mine, ref) in enumerate(zip(spec.states, theirs.states)):
        for i, (a, b) in enumerate(zip(mine, ref)):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), (
                f"{level}: states[{k}][{i}] differs at "
                f"{(a.view(torch.int16) != b.view(torch.int16)).nonzero()[:5].tolist()}")
            rounded += a.numel()
    assert rounded > 70000
    for i, (a, b) in enumerate(zip(spec.params, theirs.params)):
        if algo == "sgd":
            assert torch.equal(a.detach(), b.detach()), f"{level}: params[{i}]"
        else:
            assert_close(a.detach(), b.detach(), f"{level}: params[{i}]")


def test_stochastic_rounding_rounds_both_ways():
    """The states are not round-to-nearest's: about half the inexact values round up (an fp32
    value between two bf16 neighbours goes to either with the probability of its distance),
    and a resumed run (same seeds and counters) repeats the bits."""
    algo, flags = "sgd", dict(momentum=True)
    runs = {}
    for name, sr in (("rn", False), ("sr", True), ("sr again", True)):
        spec, hp = make_spec(algo, flags, ("x", F32, BF16, PLAIN, sr), [(4096,)], (), None)
        runs[name] = run_backend(C, spec, hp, algo, flags, steps=3)
    rn, sr, again = (r.states[0][0].float() for r in runs.values())
    assert torch.equal(sr, again)
    differ = (rn != sr).float().mean().item()
    assert 0.2 < differ < 0.6, differ


# ---- bad input ----------------------------------------------------------------------------------
def _bucket(p_dtype=F32, s_dtype=F32, weights=PLAIN, extra=None, seeds=(), lists=2):
    params = [torch.nn.Parameter(torch.randn(3).to(p_dtype)) for _ in range(2)]
    states = [[torch.zeros(3, dtype=s_dtype) for _ in params] for _ in range(lists)]
    if extra is not None:
        states.append([torch.zeros(3, dtype=extra) for _ in params])
    return C.Bucket(params, states, [torch.zeros(()) for _ in params], [0, 0], [], [], weights,
                    list(seeds))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(weights=3), ValueError, r"weights = 3 is not a weights mode: expected 0 \(plain\)"),
    (dict(weights=MASTER, extra=F32), TypeError,
     r"weights = 1 \(master copies\) needs float16 or bfloat16 params; params\[0\] has "
     r"Float"),
    (dict(p_dtype=BF16, s_dtype=BF16, weights=KAHAN, extra=F32), TypeError,
     r"states\[2\]\[0\] has dtype Float; expected BFloat16 \(weights = 2 \(kahan"),
    (dict(p_dtype=F16, s_dtype=F16, weights=MASTER, extra=F16), TypeError,
     r"states\[2\]\[0\] has dtype Half; expected Float \(weights = 1 \(master"),
    (dict(p_dtype=BF16, s_dtype=BF16, weights=KAHAN, lists=0), RuntimeError,
     r"needs a last state list \(the compensations\); states is empty"),
    (dict(s_dtype=F16), TypeError, r"states\[0\]\[0\] has dtype Half but params\[0\] has Float, "
                                   r"whose states are float32 or bfloat16"),
    (dict(p_dtype=torch.float64, s_dtype=F32), TypeError, "whose states are float64"),
    (dict(p_dtype=BF16, s_dtype=F16), TypeError, "whose states are bfloat16 or float32"),
    (dict(s_dtype=BF16, seeds=[1]), RuntimeError, r"seeds has 1 entries for 2 params"),
    (dict(s_dtype=BF16, seeds=[1, 1 << 32]), ValueError,
     r"seeds\[1\] = 4294967296 is out of range: expected \[0, 2\^32\)"),
    (dict(s_dtype=BF16, seeds=[-1, 0]), ValueError, r"seeds\[0\] = -1 is out of range"),
    (dict(seeds=[1, 2]), TypeError,
     r"seeds \(stochastic rounding\) need bfloat16 states; states\[0\]\[0\] has dtype Float"),
], ids=["weights-3", "master-fp32-params", "kahan-fp32-list", "master-fp16-list", "kahan-no-list",
        "fp32-fp16-states", "fp64-fp32-states", "bf16-fp16-states", "seeds-count", "seed-2^32",
        "seed-negative", "seeds-fp32-states"])
def test_bad_precision_buckets_are_rejected(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _bucket(**kwargs)


def test_mixed_state_dtypes_are_rejected():
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2)]
    states = [[torch.zeros(3, dtype=BF16) for _ in params], [torch.zeros(3) for _ in params]]
    with pytest.raises(TypeError, match=r"states\[1\]\[0\] has dtype Float; the bucket's states "
                                        r"have dtype BFloat16 \(states\[0\]\[0\]'s"):
        C.Bucket(params, states, [torch.zeros(()) for _ in params], [0, 0], [])


def test_state_dtype_changed_in_place_raises_before_any_change():
    """A state given another dtype after the bucket was built (`s.data = ...`) is found by the
    step's checks before anything is written."""
    mode = ("bf16-bf16sr-kahan", BF16, BF16, KAHAN, True)
    spec, hp = make_spec("adam", {}, mode, [(5,), (4,)], (), None)
    bucket = bucket_of(spec)
    for p in spec.params:
        p.grad = torch.randn(p.shape).to(BF16)
    spec.states[1][1].data = torch.zeros(4, dtype=torch.float16)
    before = [t.clone() for t in [p.detach() for p in spec.params] + spec.states[0]]
    with pytest.raises(TypeError, match=r"states\[1\]\[1\] has dtype Half; the bucket's states"):
        c_step(bucket, hp, "adam", {})
    after = [p.detach() for p in spec.params] + spec.states[0]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert all(s.item() == 0 for s in spec.steps)
    with pytest.raises(RuntimeError, match=r"states: expected 1 state lists for sgd "
                                           r"\(momentum_buffer, then the compensations\), got 3"):
        c_step(bucket, hp, "sgd", dict(momentum=True))


def test_levels_agree_bit_for_bit_with_stochastic_rounding(monkeypatch):
    """Note [one source, three instruction sets]: the hash of each element is the same in the
    even/odd lanes, the element-order vectors and the tail."""
    algo, flags = "adam", dict(amsgrad=True)
    mode = ("bf16-bf16sr-kahan", BF16, BF16, KAHAN, True)
    runs = []
    for name in LEVELS:
        monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", name)
        spec, hp = make_spec(algo, flags, mode)
        runs.append(run_backend(C, spec, hp, algo, flags, steps=3))
    first, *rest = runs
    for run in rest:
        for a, b in zip(first.params + sum(first.states, []), run.params + sum(run.states, [])):
            assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))


NAN_MODES = [("bf16-bf16", BF16, BF16, PLAIN, False)] + [
    m for m in MODES if m[0] in ("fp32-bf16", "bf16-bf16sr", "bf16-bf16sr-kahan",
                                 "bf16-bf16sr-master", "bf16-fp32-kahan")]
NAN_AT = [[3, 16, 40001], [100, 33334], [2049]]   # per state list: even and odd lanes, pairs


@parametrize_levels
@pytest.mark.parametrize("mode", NAN_MODES, ids=[m[0] for m in NAN_MODES])
@pytest.mark.parametrize("algo,flags", CONFIGS[:3], ids=CONFIG_IDS[:3])
def test_nan_in_a_state_is_stored_as_nan(level, algo, flags, mode):
    """Adam's bf16 store tests the param alone for NaNs (kNanReachesParam, Note [bf16 NaN check]
    in csrc/cpu/elementwise.h): a NaN in exp_avg, exp_avg_sq or max_exp_avg_sq, and only there,
    is a NaN in every stream the reference has one in, and a bf16 NaN is 0x7FC0."""
    runs = []
    for backend in (reference, C):
        spec, hp = make_spec(algo, flags, mode, shapes=[(70001,)], transposed=(), sliced=None)
        lists = len(spec.states) - (mode[3] != PLAIN)
        for k in range(lists):
            # NaNs with every mantissa bit set: without the fix-up the rounding keeps 0x7FFF
            # (0xFFFF) in bf16 or carries into the sign (an fp32 0x7FFFFFFF gives -0.0)
            s = spec.states[k][0].view(-1)
            bits = s.view(torch.int16) if s.dtype == BF16 else s.view(torch.int32)
            for j, at in enumerate(NAN_AT[k]):
                bits[at] = (-1, 0x7FFF)[j % 2] if s.dtype == BF16 else 0x7FFFFFFF
        runs.append(run_backend(backend, spec, hp, algo, flags, steps=2))
    theirs, ours = runs
    pairs = [(ours.params[0].detach(), theirs.params[0].detach())]
    pairs += [(a[0], b[0]) for a, b in zip(ours.states, theirs.states)]
    for i, (a, b) in enumerate(pairs):
        assert b.isnan().any() or i == len(pairs) - 1, f"{level}: stream {i} has no NaN"
        assert torch.equal(a.isnan(), b.isnan()), f"{level} {mode[0]}: stream {i}'s NaNs"
        if a.dtype == BF16:
            bits = a.view(torch.int16).to(torch.int64) & 0xFFFF
            assert (bits[a.isnan()] == 0x7FC0).all(), f"{level}: stream {i}: NaN is not 0x7FC0"


CACHED_ELEMS = 1 << 18   # 4 chunks: both stages on one thread (Note [two stages in cache])
LAMB = CONFIGS[-1]


@parametrize_levels
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_kept_update_changes_no_bit(level, mode):
    """Note [kept update] (csrc/cpu/lamb.h): a tensor of 4 chunks takes both of LAMB's stages on
    one thread, its update kept in that thread's buffer; one of 5 chunks is stepped whole, its
    chunks shared by the threads, its update in the group's buffer. The second holds the first's
    elements and a zero (param, grad and states 0: its update is 0, so it adds nothing to either
    sum), so the two paths see the same chunks and the same sums, and must give the same bits, in
    every precision mode and with the stochastic rounding's element indices."""
    algo, flags = LAMB
    kept, recomputed = (make_spec(algo, flags, mode, shapes=[(n,)], transposed=(), sliced=None)
                        for n in (CACHED_ELEMS, CACHED_ELEMS + 1))
    spec, hp = kept
    other = recomputed[0]
    with torch.no_grad():
        other.params[0][:-1] = spec.params[0]
        other.params[0][-1] = 0
        if mode[3] == MASTER:
            spec.states[-1][0].copy_(spec.params[0])
            other.states[-1][0].copy_(other.params[0])
    start = spec.params[0].detach().clone()
    buckets = bucket_of(spec), bucket_of(other)
    torch.manual_seed(1)
    for step in range(3):
        g = torch.randn(CACHED_ELEMS, dtype=torch.float64).to(mode[1])
        spec.params[0].grad = g
        other.params[0].grad = torch.cat([g, g.new_zeros(1)])
        inv_scale, clip_coef = (None, None) if step == 0 else (torch.tensor(0.5), torch.tensor(0.7))
        for bucket in buckets:
            c_step(bucket, hp, algo, flags, clip_coef, inv_scale)
    assert not torch.equal(spec.params[0].detach(), start), f"{level}: nothing stepped"
    streams = [("param", spec.params[0].detach(), other.params[0].detach())]
    streams += [(f"states[{k}]", a[0], b[0]) for k, (a, b) in
                enumerate(zip(spec.states, other.states))]
    for name, a, b in streams:
        assert b[-1] == 0, f"{level} {mode[0]}: {name}'s zero element moved"
        diff = (a.double() - b[:-1].double()).abs()
        assert torch.equal(a, b[:-1]), (f"{level} {mode[0]}: {name} differs at "
                                        f"{diff.argmax().item()} by {diff.max().item():.3g}")
