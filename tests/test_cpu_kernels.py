"""The CPU backend fusedopt._C at its own interface, at every kernel level (scalar, AVX2,
AVX-512; FUSEDOPT_CPU_CAPABILITY caps the level per call).

Oracles: fusedopt.backends.reference on an identical BucketSpec (Adam/SGD steps and norms, with
several groups, None grads, unscale/clip factors), torch.optim with foreach=False through the
public classes (params AND state over 10+ steps), and closed forms for the norms.
"""
import copy
import math
import shutil
import subprocess

import pytest
import torch

import fusedopt
from fusedopt import _engine
from fusedopt._hparams import NUM_COLS
from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import cpu as cpu_backend
from fusedopt.backends import reference
from helpers import clone_params, make_params, set_grads
from tolerances import LOW_PRECISION_FACTOR, assert_close, assert_within_ulp, max_error

# the module the cpu backend steps with: fusedopt._C, or its JIT build (Note [jit build])
C = cpu_backend._extension() if cpu_backend.unavailable_reason() is None else None
pytestmark = pytest.mark.skipif(C is None, reason=f"cpu backend: {cpu_backend.unavailable_reason()}")

LEVELS = ["scalar", "avx2", "avx512"]
ORDER = {name: i for i, name in enumerate(LEVELS)}
BEST = C.cpu_capability() if C is not None else "scalar"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp64", "fp16", "bf16"]
LOW = (torch.float16, torch.bfloat16)
INF = float("inf")

# 0, 1, odd, 2-d, a transposed (non-contiguous, dense) view, and 66537 elements: two chunks
# of the engine (Note [work items]). LARGE adds > 2^20 elements: a parallel region at 2 threads.
SHAPES = [(0,), (1,), (7,), (33, 17), (12, 10), (4, 1, 3), ((1 << 16) + 1001,)]
TRANSPOSED = (4,)
LARGE = [((1 << 20) + 3,), (12, 10), (5,)]
STEPS = 10

# hp rows by column (the descriptor's column_names; padded to the table's width), three groups
# per algorithm. Adam's beta1 = 0.3 makes torch's lerp_ take its second formula (weight 1 - beta1
# >= 0.5); LARS's third row is excluded from adaptation (lars_exclude), as configs exclude norms
# and biases; LAMB's second has no weight decay (trust ratio 1 unless always_adapt).
ROWS = {
    "adam": [(1e-2, 0.0, 0.9, 0.999, 1e-8), (3e-3, 0.1, 0.8, 0.99, 1e-6),
             (5e-2, 0.02, 0.3, 0.95, 1e-8)],
    "sgd": [(0.05, 0.0, 0.9, 0.0), (0.02, 0.01, 0.8, 0.3), (0.1, 0.05, 0.5, 0.0)],
    "lion": [(1e-3, 0.1, 0.9, 0.99), (3e-4, 0.0, 0.95, 0.98), (2e-3, 1.0, 0.3, 0.9)],
    "lars": [(0.1, 1e-4, 0.9, 0.0, 1e-8, 1e-3, 0.0), (0.3, 0.0, 0.5, 0.2, 1e-3, 0.02, 0.0),
             (0.1, 1e-2, 0.9, 0.0, 1e-8, 1e-3, 1.0)],
    "lamb": [(1e-2, 0.01, 0.9, 0.999, 1e-6), (3e-3, 0.0, 0.8, 0.99, 1e-6),
             (1e-2, 0.1, 0.3, 0.95, 1e-4)],
}
# buckets without momentum buffers hold groups with momentum 0 (Note [algorithm as data])
NO_MOMENTUM = {"sgd": [(0.05, 0.0, 0.0, 0.0), (0.02, 0.01, 0.0, 0.0)],
               "lars": [(0.1, 1e-4, 0.0, 0.0, 1e-8, 1e-3, 0.0),
                        (0.3, 1e-2, 0.0, 0.0, 1e-8, 0.02, 0.0),
                        (0.1, 0.0, 0.0, 0.0, 1e-8, 1e-3, 1.0)]}

# (algorithm, flags by name; unnamed flags are off)
CONFIGS = [
    ("adam", dict()),
    ("adam", dict(amsgrad=True)),
    ("adam", dict(maximize=True, decoupled=True)),
    ("adam", dict(amsgrad=True, maximize=True, decoupled=True)),
    ("sgd", dict(momentum=True)),
    ("sgd", dict(momentum=True, nesterov=True)),
    ("sgd", dict(momentum=True, maximize=True)),
    ("sgd", dict()),
    ("lion", dict()),
    ("lion", dict(maximize=True)),
    ("lars", dict(momentum=True)),
    ("lars", dict(momentum=True, nesterov=True)),
    ("lars", dict(momentum=True, maximize=True)),
    ("lars", dict()),
    ("lamb", dict(bias_correction=True, grad_averaging=True, decoupled=True)),
    ("lamb", dict(bias_correction=True, grad_averaging=True, decoupled=True, trust_clip=True,
                  always_adapt=True)),
    ("lamb", dict()),                                       # apex's adam_w_mode=False, no options
    ("lamb", dict(bias_correction=True, decoupled=True, maximize=True)),
]
CONFIG_IDS = [f"{a}-" + "-".join(k for k, v in f.items() if v) for a, f in CONFIGS]
# bitwise the reference's in every dtype: Lion's ops are all correctly rounded in torch too
# (Adam's sqrt is not, Note [torch's rounding]; LARS and LAMB sum their norms in another order)
SAME_BITS_AS_REFERENCE = {"lion"}
# whose levels and thread counts give the same bits (Note [one source, three instruction sets]);
# LARS's and LAMB's per-tensor sums add lanes of the level's width (two_stage.h)
SAME_BITS_AT_EVERY_LEVEL = [config for config in CONFIGS if config[0] in ("adam", "sgd", "lion")]
TWO_STAGE = [config for config in CONFIGS if ALGORITHMS[config[0]].two_stage]


def config(name, **flags):
    return next(c for c in CONFIGS if c == (name, flags))


def flags_word(algo, flags):
    return ALGORITHMS[algo].flags_word(flags)


@pytest.fixture
def level(request, monkeypatch):
    """Runs the test at the kernel level named by the parameter (capped by the CPU)."""
    monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", request.param)
    expected = min(request.param, BEST, key=ORDER.get)
    assert C.cpu_capability() == expected
    return expected


def parametrize_levels(f):
    return pytest.mark.parametrize("level", LEVELS, indirect=True)(f)


# ---- building and running buckets ----------------------------------------------------------
def hp_of(rows):
    table = torch.zeros(len(rows), NUM_COLS, dtype=torch.float64)
    for i, row in enumerate(rows):
        table[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    return table


def make_spec(algo, flags, dtype, shapes=SHAPES, transposed=TRANSPOSED, seed=0):
    torch.manual_seed(seed)
    params = make_params(shapes, dtype, transposed)
    names = ALGORITHMS[algo].state_names(flags_word(algo, flags))
    states = [[torch.zeros_like(p) for p in params] for _ in names]
    rows = ROWS[algo] if names or algo not in NO_MOMENTUM else NO_MOMENTUM[algo]
    spec = _engine.BucketSpec(torch.device("cpu"), dtype, ())
    spec.params = params
    spec.states = states
    spec.steps = [torch.zeros(()) for _ in params]
    spec.group_index = [i % len(rows) for i in range(len(params))]
    return spec, hp_of(rows)


def clone_spec(spec):
    out = copy.copy(spec)
    out.params = clone_params(spec.params)
    for new, old in zip(out.params, spec.params):
        if old.grad is not None:
            new.grad = old.grad.clone()
    out.states = [[s.clone() for s in lst] for lst in spec.states]
    out.steps = [s.clone() for s in spec.steps]
    out.pending = clone_params(spec.pending)
    return out


def bucket_of(spec):
    return C.Bucket(spec.params, spec.states, spec.steps, spec.group_index, spec.pending, [],
                    spec.weights, spec.seeds)


def c_step(bucket, hp, algo, flags, clip_coef=None, inv_scale=None, found_inf=None):
    C.step(bucket, hp, ALGORITHMS[algo].id, flags_word(algo, flags), clip_coef, inv_scale,
           found_inf)


def scalars_for(step):
    """Unscale and clip factors on some steps, as an AMP + clipping loop hands them over."""
    inv_scale = torch.tensor(2.0 ** -10) if step % 3 == 1 else None
    clip_coef = torch.tensor(0.37) if step % 3 == 2 or step == 4 else None
    return inv_scale, clip_coef


def set_spec_grads(specs, step, none_every=4):
    """Same grads on every spec (made in fp64), None on some steps; scaled by 2^10 on the
    steps whose inv_scale undoes it."""
    set_grads([s.params for s in specs], step, none_every)
    if scalars_for(step)[0] is not None:
        for s in specs:
            for p in s.params:
                if p.grad is not None:
                    p.grad.mul_(2.0 ** 10)


def run_backend(backend, spec, hp, algo, flags, steps=STEPS, others=()):
    """Steps `spec` with `backend` (reference module or the C extension); grads are set on
    `spec` and `others` alike."""
    handle = spec if backend is reference else bucket_of(spec)
    for step in range(steps):
        set_spec_grads([spec, *others], step)
        inv_scale, clip_coef = scalars_for(step)
        if backend is reference:
            reference.step(spec, hp, ALGORITHMS[algo], flags_word(algo, flags),
                           clip_coef=clip_coef, inv_scale=inv_scale)
        else:
            c_step(handle, hp, algo, flags, clip_coef, inv_scale)
    return spec


def tensors_of(spec):
    """(name, tensor) of everything a step may change."""
    out = [(f"params[{i}] {tuple(p.shape)}", p.detach()) for i, p in enumerate(spec.params)]
    out += [(f"states[{k}][{i}]", s)
            for k, lst in enumerate(spec.states) for i, s in enumerate(lst)]
    out += [(f"steps[{i}]", s) for i, s in enumerate(spec.steps)]
    return out


_REFERENCE_RUNS = {}


def reference_run(algo, flags, dtype, shapes=SHAPES, transposed=TRANSPOSED):
    """The reference backend's run of a config (shared by the levels' tests)."""
    key = (algo, tuple(flags.items()), dtype, tuple(shapes))
    if key not in _REFERENCE_RUNS:
        spec, hp = make_spec(algo, flags, dtype, shapes, transposed)
        _REFERENCE_RUNS[key] = run_backend(reference, spec, hp, algo, flags)
    return _REFERENCE_RUNS[key]


def assert_same_bits(runs):
    (first_key, first), *rest = runs.items()
    for key, run in rest:
        for (name, a), (_, b) in zip(tensors_of(run), tensors_of(first)):
            diff = (a.double() - b.double()).abs()
            assert torch.equal(a, b), (f"{key} vs {first_key}: {name} differs at "
                                       f"{diff.argmax().item()} by {diff.max().item():.3g}")


def check_against_reference(ours, algo, flags, dtype, where, shapes=SHAPES, transposed=TRANSPOSED):
    theirs = reference_run(algo, flags, dtype, shapes, transposed)
    if algo in SAME_BITS_AS_REFERENCE:
        assert_same_bits({"reference": theirs, where: ours})
        return
    if dtype not in LOW:
        for (name, a), (_, b) in zip(tensors_of(ours), tensors_of(theirs)):
            assert_close(a, b, f"{where}: {name}")
        return
    # fp16/bf16: both compute in fp32, but a 1-ulp fp32 difference (torch's sqrt is not
    # correctly rounded) can flip a rounding to the low dtype; judge both against fp64
    oracle = reference_run(algo, flags, torch.float64, shapes, transposed)
    for k in range(-1, len(ours.states)):
        name = "params" if k < 0 else f"states[{k}]"
        mine, ref, exact = ((s.params if k < 0 else s.states[k]) for s in (ours, theirs, oracle))
        err_ours, err_ref = max_error(mine, exact), max_error(ref, exact)
        assert err_ours <= LOW_PRECISION_FACTOR * err_ref, (
            f"{where} {name}: error vs fp64 {err_ours:.3g} > {LOW_PRECISION_FACTOR} x "
            f"reference backend's {err_ref:.3g}")
    assert [s.item() for s in ours.steps] == [s.item() for s in theirs.steps], f"{where}: steps"


# ---- steps against the reference backend ---------------------------------------------------
@parametrize_levels
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algo,flags", CONFIGS, ids=CONFIG_IDS)
def test_step_matches_reference_backend(level, algo, flags, dtype):
    spec, hp = make_spec(algo, flags, dtype)
    ours = run_backend(C, spec, hp, algo, flags)
    check_against_reference(ours, algo, flags, dtype, f"{level} {dtype}")


@parametrize_levels
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lion_direction_is_torch_sign(level, dtype):
    """Lion's direction is torch.sign of the interpolation: 0 for zeros and for NaN (torch's CPU
    sign), +-1 for infinities; lanes and tails alike (a 37-element tensor: vectors and a tail)."""
    spec, hp = make_spec("lion", {}, dtype, shapes=[(37,), (5, 3)], transposed=())
    for p in spec.params:
        p.grad = torch.randn(p.shape, dtype=torch.float64).to(dtype)
        p.grad.view(-1)[::4] = 0.0                          # with exp_avg 0: direction 0
        p.grad.view(-1)[1] = math.nan
        p.grad.view(-1)[2] = INF
        p.grad.view(-1)[5] = -INF
    theirs = clone_spec(spec)
    for _ in range(2):
        c_step(bucket_of(spec), hp, "lion", {})
        reference.step(theirs, hp, ALGORITHMS["lion"], 0)
    for (name, a), (_, b) in zip(tensors_of(spec), tensors_of(theirs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"{level} {name}: {m}")


LARGE_CONFIGS = [config("adam", amsgrad=True), config("sgd", momentum=True, nesterov=True),
                 config("lion"), config("lars", momentum=True), CONFIGS[CONFIG_IDS.index(
                     "lamb-bias_correction-grad_averaging-decoupled")]]
LARGE_IDS = [CONFIG_IDS[CONFIGS.index(c)] for c in LARGE_CONFIGS]


@parametrize_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("algo,flags", LARGE_CONFIGS, ids=LARGE_IDS)
def test_large_tensor_matches_reference_backend(level, algo, flags, dtype):
    """> 2^20 elements: 17 chunks split over the threads of one parallel region (two-stage
    algorithms: a tensor's sums from 17 chunks, added in chunk order)."""
    spec, hp = make_spec(algo, flags, dtype, LARGE, (1,))
    ours = run_backend(C, spec, hp, algo, flags)
    check_against_reference(ours, algo, flags, dtype, f"{level} {dtype}", LARGE, (1,))


LEVEL_CONFIGS = [config("adam", amsgrad=True, maximize=True, decoupled=True),
                 config("sgd", momentum=True, nesterov=True), config("lion", maximize=True)]
LEVEL_IDS = [CONFIG_IDS[CONFIGS.index(c)] for c in LEVEL_CONFIGS]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algo,flags", LEVEL_CONFIGS, ids=LEVEL_IDS)
def test_levels_agree_bit_for_bit(monkeypatch, algo, flags, dtype):
    """Note [one source, three instruction sets]: every level rounds the same IEEE operations,
    so scalar, AVX2 and AVX-512 give identical bits."""
    runs = {}
    for name in LEVELS:
        monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", name)
        spec, hp = make_spec(algo, flags, dtype)
        runs[name] = run_backend(C, spec, hp, algo, flags, steps=4)
    assert_same_bits(runs)


@pytest.mark.parametrize("algo,flags", LEVEL_CONFIGS[:2] + TWO_STAGE[:1] + TWO_STAGE[-1:],
                         ids=LEVEL_IDS[:2] + [CONFIG_IDS[CONFIGS.index(c)]
                                              for c in TWO_STAGE[:1] + TWO_STAGE[-1:]])
def test_thread_count_does_not_change_bits(algo, flags):
    """Note [work items]: chunk bounds do not depend on the thread count, and two-stage sums
    are added in chunk order (Note [two stages])."""
    assert_same_bits(runs_at_thread_counts(algo, flags, LARGE, (1,)))


def runs_at_thread_counts(algo, flags, shapes, transposed):
    """{"1 threads": run, "2 threads": run}: 3 fp32 steps of the C extension at each count."""
    runs = {}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            spec, hp = make_spec(algo, flags, torch.float32, shapes, transposed)
            runs[f"{n} threads"] = run_backend(C, spec, hp, algo, flags, steps=3)
    finally:
        torch.set_num_threads(threads)
    return runs


# Note [two stages in cache] (csrc/cpu/multi_tensor.h): tensors of at most 4 chunks take both
# stages on one thread, larger ones are summed chunk by chunk; over 2^19 elements in all, so both
# kinds run in one parallel region at 2 threads: 4 chunks exactly, 2, 1, one chunk over, empty,
# and a 17-chunk tensor.
CACHED = [(1 << 18,), (100_003,), (3, 17_001), ((1 << 18) + 1,), (0,), (33,), ((1 << 20) + 3,)]


@pytest.mark.parametrize("algo,flags", TWO_STAGE[:1] + TWO_STAGE[-1:],
                         ids=[CONFIG_IDS[CONFIGS.index(c)] for c in TWO_STAGE[:1] + TWO_STAGE[-1:]])
def test_two_stages_in_cache_match_reference_at_any_thread_count(algo, flags):
    runs = runs_at_thread_counts(algo, flags, CACHED, (2,))
    assert_same_bits(runs)
    spec, hp = make_spec(algo, flags, torch.float32, CACHED, (2,))
    theirs = run_backend(reference, spec, hp, algo, flags, steps=3)
    for (name, a), (_, b) in zip(tensors_of(runs["2 threads"]), tensors_of(theirs)):
        assert_close(a, b, f"2 threads: {name}")


# Note [pipelined stages] (csrc/cpu/multi_tensor.h): tensors of over 4 chunks are stepped in groups
# of at most 2^24 elements (LAMB's updates each at their own place in the group's buffer, Note
# [kept update]): here a group of one and a group of three (and a small tensor between, stepped in
# cache)
GROUPS = [((1 << 23) + 1,), (5,), ((1 << 23) + 1,), (300_001,), (400_003,)]


@pytest.mark.parametrize("algo,flags", TWO_STAGE[:1] + TWO_STAGE[-1:],
                         ids=[CONFIG_IDS[CONFIGS.index(c)] for c in TWO_STAGE[:1] + TWO_STAGE[-1:]])
def test_groups_of_larger_tensors_match_reference_at_any_thread_count(algo, flags):
    runs = runs_at_thread_counts(algo, flags, GROUPS, ())
    assert_same_bits(runs)
    spec, hp = make_spec(algo, flags, torch.float32, GROUPS, ())
    theirs = run_backend(reference, spec, hp, algo, flags, steps=3)
    for (name, a), (_, b) in zip(tensors_of(runs["2 threads"]), tensors_of(theirs)):
        assert_close(a, b, f"2 threads: {name}")


FOUND_INF_CONFIGS = [config("adam", amsgrad=True), config("sgd", momentum=True), config("lion"),
                     config("lars", momentum=True), TWO_STAGE[-1]]


@parametrize_levels
@pytest.mark.parametrize("algo,flags", FOUND_INF_CONFIGS,
                         ids=[CONFIG_IDS[CONFIGS.index(c)] for c in FOUND_INF_CONFIGS])
def test_found_inf_touches_nothing(level, algo, flags):
    spec, hp = make_spec(algo, flags, torch.float32)
    run_backend(C, spec, hp, algo, flags, steps=2)
    before = [(n, t.clone()) for n, t in tensors_of(spec)]
    bucket = bucket_of(spec)
    set_spec_grads([spec], 2, none_every=0)
    c_step(bucket, hp, algo, flags, found_inf=torch.tensor(1.0))
    for (name, a), (_, b) in zip(tensors_of(spec), before):
        assert torch.equal(a, b), f"found_inf=1 changed {name}"
    c_step(bucket, hp, algo, flags, found_inf=torch.tensor(0.0))
    counts = [(s.item(), b.item() + 1) for s, (_, b) in zip(spec.steps, before[-len(spec.steps):])]
    assert all(now == expected for now, expected in counts), f"found_inf=0 must step: {counts}"


LAYOUT_CONFIGS = [config("adam", amsgrad=True), config("lars", momentum=True), TWO_STAGE[-1]]


@parametrize_levels
@pytest.mark.parametrize("layout", ["grad-contiguous", "state-transposed", "param-sliced"])
@pytest.mark.parametrize("algo,flags", LAYOUT_CONFIGS,
                         ids=[CONFIG_IDS[CONFIGS.index(c)] for c in LAYOUT_CONFIGS])
def test_mixed_layouts_take_the_copy_path(level, layout, algo, flags):
    """Note [dense fast path]: a grad or state whose strides differ from its param's, or a param
    that is not dense (a strided slice), is stepped on contiguous copies and written back (both
    stages of a two-stage algorithm read the copies)."""

    def build():
        spec, hp = make_spec(algo, flags, torch.float32, shapes=[(40, 30), (64,)],
                             transposed=(0,))
        if layout == "param-sliced":
            base = torch.randn(40, 60)
            spec.params[0] = torch.nn.Parameter(base[:, ::2])
            for lst in spec.states:
                lst[0] = torch.zeros(40, 60)[:, 1::2]
        if layout == "state-transposed":
            spec.states[-1][0] = torch.zeros(40, 30)          # param is a transposed view
        return spec, hp

    spec, hp = build()
    ref_spec = clone_spec(spec)
    for step in range(STEPS):
        set_spec_grads([spec, ref_spec], step, none_every=0)
        if layout == "grad-contiguous":
            for s in (spec, ref_spec):
                s.params[0].grad = s.params[0].grad.contiguous()
        c_step(bucket_of(spec), hp, algo, flags)
        reference.step(ref_spec, hp, ALGORITHMS[algo], flags_word(algo, flags))
    for (name, a), (_, b) in zip(tensors_of(spec), tensors_of(ref_spec)):
        assert_close(a, b, f"{layout}: {name}")


# ---- norms ------------------------------------------------------------------------------------
NORM_SHAPES = [(0,), (1,), (7,), (33, 17), (12, 10), ((1 << 20) + 5,)]


def norm_grads(dtype, special=None):
    torch.manual_seed(3)
    grads = [torch.randn(s, dtype=torch.float64).to(dtype) for s in NORM_SHAPES]
    grads[4] = grads[4].t()
    if special is not None:
        grads[3][5, 2] = special
    return grads


def closed_form_norm(grads, norm_type):
    flat = torch.cat([g.double().reshape(-1) for g in grads])
    if norm_type == INF:
        return flat.abs().max().item() if flat.numel() else 0.0
    return math.sqrt((flat * flat).sum().item())


@parametrize_levels
@pytest.mark.parametrize("norm_type", [2.0, INF], ids=["l2", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tensors_norm_matches_closed_form(level, dtype, norm_type):
    grads = norm_grads(dtype)
    got = C.tensors_norm(grads, norm_type)
    # float64 for fp64 tensors, else float32 (Note [norm dtype], fusedopt/backends/__init__.py)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.dtype == want_dtype and got.dim() == 0
    expected = torch.tensor(closed_form_norm(grads, norm_type), dtype=want_dtype)
    assert_close(got, expected, f"{level} {dtype} norm {norm_type}")


@parametrize_levels
@pytest.mark.parametrize("special", [math.nan, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("norm_type", [2.0, INF], ids=["l2", "inf"])
def test_norm_of_nonfinite_grads(level, special, norm_type):
    grads = norm_grads(torch.float32, special)
    got = C.tensors_norm(grads, norm_type).item()
    expected = math.nan if math.isnan(special) else INF
    assert (math.isnan(got) if math.isnan(expected) else got == expected), \
        f"{level} norm {norm_type} with a {special} element: got {got}, expected {expected}"


@parametrize_levels
def test_bucket_norm_covers_params_and_pending(level):
    grads = norm_grads(torch.float32)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    params[2].grad = None                                  # undefined grads are left out
    spec, _ = make_spec("sgd", {}, torch.float32, shapes=[g.shape for g in grads[:3]],
                        transposed=())
    spec.params = params[:3]
    spec.pending = params[3:]
    bucket = bucket_of(spec)
    assert C.pending_with_grad(bucket) == [0, 1, 2]
    present = [g for i, g in enumerate(grads) if i != 2]
    for norm_type in (2.0, INF):
        got = C.bucket_norm(bucket, norm_type)
        assert_close(got, torch.tensor(closed_form_norm(present, norm_type), dtype=torch.float32),
                     f"{level} bucket_norm {norm_type}")
        assert_close(got, reference.bucket_norm(spec, norm_type), f"{level} vs reference")


def test_norm_is_the_same_for_any_thread_count():
    """Note [norm accumulation]: chunk partials are combined in chunk order."""
    grads = [torch.randn(700001), torch.randn(300000)]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(C.tensors_norm(grads, 2.0))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]), f"1 thread {results[0]} != 2 threads {results[1]}"


# ---- the public classes against torch.optim --------------------------------------------------
PUBLIC = [
    ("AdamW", dict(weight_decay=0.05, amsgrad=True), 2.0),
    ("Adam", dict(weight_decay=0.1, maximize=True), INF),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=1e-3), 2.0),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), INF),
]


@parametrize_levels
@pytest.mark.parametrize("algo,kwargs,norm_type", PUBLIC,
                         ids=[f"{a}-{'-'.join(k)}-{n}" for a, k, n in PUBLIC])
def test_clip_and_step_match_torch(level, algo, kwargs, norm_type):
    """fusedopt.clip_grad_norm_ + step (the coefficient applied inside the step) equals torch's
    clip_grad_norm_ followed by the for-loop step: params and state over 12 steps."""
    fused_cls = getattr(fusedopt, "Fused" + algo)
    torch_cls = getattr(torch.optim, algo)
    params = make_params([(70001,), (33, 17), (12, 10), (1,)], torch.float32, noncontiguous=(2,))
    ours, theirs = clone_params(params), clone_params(params)
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}]  # noqa: E731
    opt_ours = fused_cls(groups(ours), backend="cpu", **kwargs)
    opt_theirs = torch_cls(groups(theirs), foreach=False, **kwargs)
    for step in range(12):
        set_grads([ours, theirs], step)
        n_ours = fusedopt.clip_grad_norm_(ours, 1.0, norm_type)
        n_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, foreach=False)
        assert_close(n_ours, n_theirs, f"{level} step {step}: total norm")
        opt_ours.step()
        opt_theirs.step()
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p.detach(), q.detach(), f"{level} param {i}")
        for key, t in opt_theirs.state[q].items():
            assert_close(opt_ours.state[p][key], t, f"{level} param {i} state[{key!r}]")


@parametrize_levels
@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))],
                         ids=["AdamW", "SGD"])
def test_low_precision_error_bound_at_each_level(level, dtype, algo, kwargs):
    """Error against an fp64 for-loop run <= 2x torch fused's in the same dtype (issue #2)."""
    master = make_params([(257,), (31, 9), (70001,)], torch.float64)
    oracle, low_ours, low_torch = clone_params(master), clone_params(master, dtype), \
        clone_params(master, dtype)
    opts = [getattr(torch.optim, algo)(oracle, foreach=False, **kwargs),
            getattr(torch.optim, algo)(low_torch, fused=True, **kwargs),
            getattr(fusedopt, "Fused" + algo)(low_ours, backend="cpu", **kwargs)]
    for step in range(12):
        set_grads([oracle, low_torch, low_ours], step, none_every=0)
        for opt in opts:
            opt.step()
    err_ours, err_torch = max_error(low_ours, oracle), max_error(low_torch, oracle)
    assert err_ours <= LOW_PRECISION_FACTOR * err_torch, (
        f"{level} {dtype}: error {err_ours:.3g} > {LOW_PRECISION_FACTOR} x torch fused "
        f"{err_torch:.3g}")


# ---- fp32 master copies (Note [master copy], csrc/bucket.h) -----------------------------------
def with_masters(spec):
    """The spec with its fp16/bf16 params' fp32 master copies as the last state list."""
    spec.states = spec.states + [[p.detach().float() for p in spec.params]]
    spec.weights = _engine.MASTER
    return spec


@parametrize_levels
@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,flags", CONFIGS, ids=CONFIG_IDS)
def test_master_copy_matches_reference_backend(level, algo, flags, dtype):
    """The step runs on the masters (to fp32 rounding the reference backend's, itself bitwise
    torch's math: tests/test_master_weights.py); each param is its master's rounding; the
    low-precision states within one ulp of their dtype."""
    key = ("master", algo, tuple(flags.items()), dtype)
    if key not in _REFERENCE_RUNS:                    # the same for every level
        spec, hp = make_spec(algo, flags, dtype)
        _REFERENCE_RUNS[key] = run_backend(reference, with_masters(spec), hp, algo, flags)
    theirs = _REFERENCE_RUNS[key]
    spec, hp = make_spec(algo, flags, dtype)
    ours = run_backend(C, with_masters(spec), hp, algo, flags)
    for i, p in enumerate(ours.params):
        assert torch.equal(p.detach(), ours.states[-1][i].to(dtype)), f"{level}: params[{i}]"
        assert_close(ours.states[-1][i], theirs.states[-1][i], f"{level}: master {i}")
        for k in range(len(ours.states) - 1):
            assert_within_ulp(ours.states[k][i], theirs.states[k][i], f"{level}: states[{k}][{i}]")
    assert [s.item() for s in ours.steps] == [s.item() for s in theirs.steps]


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,flags", LEVEL_CONFIGS, ids=LEVEL_IDS)
def test_master_copy_levels_agree_bit_for_bit(monkeypatch, algo, flags, dtype):
    runs = {}
    for name in LEVELS:
        monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", name)
        spec, hp = make_spec(algo, flags, dtype)
        runs[name] = run_backend(C, with_masters(spec), hp, algo, flags, steps=4)
    assert_same_bits(runs)


def test_extension_links_the_shared_libstdcxx():
    """Note [shared libstdc++] (setup.py): fusedopt._C uses the process's libstdc++, never a
    private static copy, whose iostreams are never initialised (a TORCH_CHECK message with a
    number in it crashed the GPU machine's build, 2026-11-27)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run([readelf, "-d", C.__file__], capture_output=True, text=True,
                         check=True).stdout
    assert "[libstdc++.so" in out, f"{C.__file__} does not link the shared libstdc++:\n{out}"


def test_bad_master_lists():
    """A last fp32 list beside fp16/bf16 params is the master copies; anything else is held to
    the algorithm's states' rules."""
    spec, hp = make_spec("adam", {}, torch.bfloat16, shapes=[(3,), (4, 2)], transposed=())
    masters = [p.detach().float() for p in spec.params]
    with pytest.raises(RuntimeError, match=r"states\[2\]\[1\] has shape \[3\] but params\[1\]"):
        C.Bucket(spec.params, spec.states + [[masters[0], masters[0]]], spec.steps, [0, 0], [],
                 weights=_engine.MASTER)
    with pytest.raises(TypeError, match=r"states\[2\]\[0\] has dtype Double; expected Float"):
        C.Bucket(spec.params, spec.states + [[m.double() for m in masters]], spec.steps,
                 [0, 0], [], weights=_engine.MASTER)
    with pytest.raises(TypeError, match=r"states\[2\]\[0\] has dtype Float; the bucket's states "
                                        r"have dtype BFloat16"):   # without weights=1: a state
        C.Bucket(spec.params, spec.states + [masters], spec.steps, [0, 0], [])
    bucket = C.Bucket(spec.params, spec.states + [masters], spec.steps, [0, 0], [],
                      weights=_engine.MASTER)
    with pytest.raises(RuntimeError, match="expected 3 state lists .*then the master copies"):
        c_step(bucket, hp, "adam", dict(amsgrad=True))
    with pytest.raises(RuntimeError, match=r"then the master copies\), got 3"):
        c_step(bucket, hp, "sgd", dict(momentum=True))
    fp32 = [p.detach().float() for p in spec.params]   # fp32 params: an fp32 list is a state
    bucket = C.Bucket(fp32, [[torch.zeros_like(p) for p in fp32] for _ in range(3)], spec.steps,
                      [0, 0], [])
    with pytest.raises(RuntimeError, match=r"states: expected 2 state lists"):
        c_step(bucket, hp, "adam", {})


# ---- bad input: a clear error naming the argument, nothing changed ----------------------------
def _valid():
    spec, hp = make_spec("adam", {}, torch.float32, shapes=[(3,), (4, 2), (5,)], transposed=())
    for p in spec.params:
        p.grad = torch.randn(p.shape)
    return spec, hp


def _adam(spec, hp, amsgrad=False, **scalars):
    c_step(bucket_of(spec), hp, "adam", dict(amsgrad=amsgrad, decoupled=True),
           scalars.get("clip_coef"), scalars.get("inv_scale"), scalars.get("found_inf"))


def _sparse_grad(spec):
    spec.params[2].grad = torch.randn(5).to_sparse()


def _double_step(spec):
    spec.steps[2] = torch.zeros((), dtype=torch.float64)


def _double_grad(spec):
    spec.params[2].grad_dtype = None        # torch refuses a grad of another dtype otherwise
    spec.params[2].grad = torch.randn(5, dtype=torch.float64)


def _set(spec, fn):
    fn(spec)
    return spec


# (case id, how to spoil a valid spec / call, exception, message pattern). The spoiled tensor
# is the last param's where possible: the first params must still be untouched.
BAD_STEPS = [
    ("sparse-grad", lambda s, hp: (_set(s, _sparse_grad), hp),
     RuntimeError, "sparse gradients are not supported"),
    ("grad-dtype", lambda s, hp: (_set(s, _double_grad), hp),
     TypeError, r"grad of params\[2\] has dtype Double"),
    ("grad-shape", lambda s, hp: (_set(s, lambda s: s.params[1].grad.resize_(8)), hp),
     RuntimeError, r"grad of params\[1\] has shape"),
    ("state-resized", lambda s, hp: (_set(s, lambda s: s.states[1][2].resize_(6)), hp),
     RuntimeError, r"states\[1\]\[2\] has shape"),
    ("step-dtype", lambda s, hp: (_set(s, _double_step), hp),
     RuntimeError, r"steps\[2\]"),
    ("hp-float32", lambda s, hp: (s, hp.float()), RuntimeError, "hp must be"),
    ("hp-columns", lambda s, hp: (s, hp[:, :4].contiguous()), RuntimeError, "hp must be"),
    ("hp-noncontiguous", lambda s, hp: (s, torch.cat([hp, hp], 1)[:, ::2]), RuntimeError,
     "hp must be"),
    ("group-out-of-range", lambda s, hp: (_set(s, lambda s: s.group_index.__setitem__(2, 3)), hp),
     RuntimeError, r"group_index\[2\] = 3 is out of range"),
]


@pytest.mark.parametrize("case,spoil,exc,match", BAD_STEPS, ids=[c[0] for c in BAD_STEPS])
def test_bad_step_input_raises_before_any_change(case, spoil, exc, match):
    spec, hp = _valid()
    spec, hp = spoil(spec, hp)
    before = [(n, t.clone()) for n, t in tensors_of(spec)]
    with pytest.raises(exc, match=match):
        _adam(spec, hp)
    for (name, a), (_, b) in zip(tensors_of(spec), before):
        assert torch.equal(a, b), f"{case}: {name} changed before the error"


# clip_coef may be float64 too (the coefficient of fp64 grads, Note [norm dtype] in
# fusedopt/backends/__init__.py); inv_scale stays float32, as torch's unscale_ forms it
@pytest.mark.parametrize("arg,value,want", [
    ("clip_coef", torch.tensor(0.5, dtype=torch.float16), "float32 or float64"),
    ("clip_coef", torch.ones(2, dtype=torch.float64), "float32 or float64"),
    ("inv_scale", torch.ones(2), "float32"),
    ("inv_scale", torch.tensor(0.5, dtype=torch.float64), "float32"),
    ("found_inf", torch.tensor(False), "float32"),
])
def test_bad_step_scalars_name_the_argument(arg, value, want):
    spec, hp = _valid()
    before = [(n, t.clone()) for n, t in tensors_of(spec)]
    with pytest.raises(RuntimeError, match=f"{arg} must be a 0-d {want} CPU tensor"):
        _adam(spec, hp, **{arg: value})
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tensors_of(spec), before))


def test_wrong_number_of_state_lists():
    spec, hp = _valid()
    with pytest.raises(RuntimeError, match=r"states: expected 3 state lists"):
        _adam(spec, hp, amsgrad=True)
    with pytest.raises(RuntimeError, match=r"states: expected 1 state lists for sgd"):
        c_step(bucket_of(spec), hp, "sgd", dict(momentum=True))
    assert all(s.item() == 0 for s in spec.steps)


@pytest.mark.parametrize("algo,flags,exc,match", [
    (-1, 0, ValueError, r"algo must be an algorithm id from 0 to 4 .*; got -1"),
    (5, 0, ValueError, r"algo must be an algorithm id from 0 to 4 .*; got 5"),
    (2, 2, ValueError, r"flags = 2 has bits that lion does not have: its 1 flags are bits 0 to 0 "
                       r"\(maximize\)"),
    (0, 8, ValueError, r"flags = 8 has bits that adam does not have: its 3 flags"),
    (4, -1, ValueError, r"flags = -1 has bits that lamb does not have"),
    (4, 0, RuntimeError, r"states: expected 2 state lists for lamb \(exp_avg, exp_avg_sq\), "
                         r"got 3"),
], ids=["algo-negative", "algo-unknown", "lion-flag", "adam-flag", "flags-negative",
        "lamb-states"])
def test_bad_algorithm_or_flags_raise_before_any_change(algo, flags, exc, match):
    spec, hp = _valid()
    spec.states.append([torch.zeros_like(p) for p in spec.params])
    before = [(n, t.clone()) for n, t in tensors_of(spec)]
    with pytest.raises(exc, match=match):
        C.step(bucket_of(spec), hp, algo, flags, None, None, None)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tensors_of(spec), before))


@pytest.mark.parametrize("param,exc,match", [
    (torch.zeros(3, dtype=torch.complex64), TypeError, r"params\[1\] is complex"),
    (torch.zeros(3, dtype=torch.int32), TypeError, r"params\[1\] has dtype Int"),
    (torch.zeros(3).to_sparse(), RuntimeError, r"params\[1\] has layout"),
], ids=["complex", "integer", "sparse"])
def test_bad_params_rejected_when_the_bucket_is_built(param, exc, match):
    params = [torch.zeros(3), param]
    with pytest.raises(exc, match=match):
        C.Bucket(params, [], [torch.zeros(()) for _ in params], [0, 0], [])


def test_bucket_lists_must_agree():
    p = [torch.zeros(3), torch.zeros(2)]
    steps = [torch.zeros(()), torch.zeros(())]
    with pytest.raises(RuntimeError, match=r"states\[0\] has 1 tensors for 2 params"):
        C.Bucket(p, [[torch.zeros(3)]], steps, [0, 0], [])
    with pytest.raises(TypeError, match=r"states\[0\]\[1\] has dtype Half"):
        C.Bucket(p, [[torch.zeros(3), torch.zeros(2).half()]], steps, [0, 0], [])
    with pytest.raises(RuntimeError, match=r"group_index has 1 entries for 2 params"):
        C.Bucket(p, [], steps, [0], [])
    with pytest.raises(RuntimeError, match=r"group_index\[1\] = -1 is out of range"):
        C.Bucket(p, [], steps, [0, -1], [])


def test_params_off_the_cpu_are_rejected():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.empty(3, device="meta"))]
    params[0].grad = torch.ones(3)
    steps = [torch.zeros(()), torch.zeros((), device="meta")]
    bucket = C.Bucket(params, [], steps, [0, 0], [])
    with pytest.raises(RuntimeError, match=r"params\[1\] is on meta"):
        c_step(bucket, hp_of(NO_MOMENTUM["sgd"][:1]), "sgd", {})
    assert torch.equal(params[0].detach(), torch.zeros(3)) and steps[0].item() == 0


def test_buckets_off_the_cpu_are_rejected():
    params = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    bucket = C.Bucket(params, [], [torch.zeros((), device="meta")], [0], [])
    with pytest.raises(RuntimeError,
                       match=r"step: params\[0\] is on meta; step takes CPU tensors only"):
        c_step(bucket, hp_of(NO_MOMENTUM["sgd"][:1]), "sgd", {})


def test_bad_norm_input():
    with pytest.raises(ValueError, match="norm_type must be 2.0 or inf, got 1"):
        C.tensors_norm([torch.ones(3)], 1.0)
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype Long"):
        C.tensors_norm([torch.ones(3), torch.ones(3, dtype=torch.long)], 2.0)
    with pytest.raises(RuntimeError, match=r"sparse gradients are not supported \(tensors\[0\]"):
        C.tensors_norm([torch.ones(3).to_sparse()], 2.0)
    spec, _ = _valid()
    spec.params[1].grad = torch.ones(4, 2).to_sparse()
    bucket = bucket_of(spec)
    with pytest.raises(RuntimeError,
                       match=r"sparse gradients are not supported \(grad of params\[1\]"):
        C.bucket_norm(bucket, 2.0)


def test_bad_capability_variable(monkeypatch):
    spec, hp = _valid()
    before = [(n, t.clone()) for n, t in tensors_of(spec)]
    monkeypatch.setenv("FUSEDOPT_CPU_CAPABILITY", "avx1024")
    with pytest.raises(ValueError, match="FUSEDOPT_CPU_CAPABILITY must be one of"):
        _adam(spec, hp)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tensors_of(spec), before))
