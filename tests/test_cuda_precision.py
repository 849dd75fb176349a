"""The CUDA backend's precision modes (issue 25; Note [precision modes] and Note [stochastic
rounding] in docs/internals.md) against the reference backend: every algorithm, every pair of
param and state dtypes the contract allows, plain, master and Kahan weights, round-to-nearest
and stochastically rounded bf16 states, over tensors of 0, 1, 33, 105 (odd), 2^20 + 3 (17
chunks) elements, a misaligned one, a transposed one and one with gaps; and the stochastic
rounding itself bit for bit. Skipped as a whole without a GPU; ``python
tests/test_cuda_precision.py`` runs the same harness with the reference backend on the CPU on
both sides, a check of the harness (not of the kernels) where no GPU is lent."""
import pytest
import torch

from fusedopt import backends
from fusedopt._engine import KAHAN, MASTER, PLAIN, BucketSpec
from fusedopt._hparams import NUM_COLS
from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import reference
from tolerances import LOW_PRECISION_ULPS, assert_close, assert_within_ulps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
LOW = (F16, BF16)
STEPS = 5          # t = 1 seeds SGD's and LARS's buffers; later steps blend, with new SR keys
NO_GRAD = (2, 1)   # on step 2, params[1] has no grad: neither stepped nor counted
# Stochastically rounded states of one step from the same inputs: bits differ only where the
# fp32 values differ (an ulp, in rare lanes) and the random bits fall between them (2^-16 of
# those); round-to-nearest, or another key, differs in about half of the inexact elements.
SR_MISMATCH = 0.01

ROW_ADAM = dict(lr=1e-2, weight_decay=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
CASES = {   # id -> (algorithm, flags, the first group's row; the second group has lr / 2)
    "adam-amsgrad": ("adam", {"amsgrad": True}, ROW_ADAM),
    "adamw": ("adam", {"decoupled": True}, ROW_ADAM),
    "sgd-momentum": ("sgd", {"momentum": True},
                     dict(lr=0.1, weight_decay=1e-4, momentum=0.9, dampening=0.1)),
    "lion": ("lion", {}, dict(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.99)),
    "lars": ("lars", {"momentum": True}, dict(lr=0.1, weight_decay=1e-4, momentum=0.9,
                                              dampening=0.0, eps=1e-8, eta=1e-3, exclude=0.0)),
    "lamb": ("lamb", {"bias_correction": True, "grad_averaging": True, "decoupled": True},
             dict(lr=1e-2, weight_decay=1e-2, beta1=0.9, beta2=0.999, eps=1e-6)),
}

# Note [precision modes]: the state dtypes beside each param dtype
STATE_DTYPES = {F64: (F64,), F32: (F32, BF16), F16: (F16, F32, BF16), BF16: (BF16, F32)}
NAMES = {F64: "fp64", F32: "fp32", F16: "fp16", BF16: "bf16"}
WEIGHT_NAMES = {PLAIN: "plain", MASTER: "master", KAHAN: "kahan"}


def precisions():
    """(param dtype, state dtype, weights, seeds?) for every mode the contract allows: 25."""
    for param, states in STATE_DTYPES.items():
        for state in states:
            for weights in ((PLAIN, MASTER, KAHAN) if param in LOW else (PLAIN,)):
                for seeded in ((False, True) if state == BF16 else (False,)):
                    yield param, state, weights, seeded


PRECISIONS = list(precisions())
PRECISION_IDS = [f"{NAMES[p]}-states_{NAMES[s]}{'_sr' if sr else ''}-{WEIGHT_NAMES[w]}"
                 for p, s, w, sr in PRECISIONS]


def shapes(big=(1 << 20) + 3):
    """The params' values (on the CPU) and layouts: contiguous, misaligned (a view at
    storage offset 1: the kernels' scalar path), transposed, and with gaps (staged)."""
    return [torch.randn(0), torch.randn(1), torch.randn(33), torch.randn(3, 5, 7),
            torch.randn(big), torch.randn(101)[1:], torch.randn(17, 33).t(),
            torch.randn(9, 14)[:, ::2]]


def laid_out_like(t, dtype, device):
    """A copy of ``t`` in ``dtype`` on ``device`` with t's sizes, strides and storage offset."""
    extent = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0
    storage = torch.empty(t.storage_offset() + extent, dtype=dtype, device=device)
    return storage.as_strided(t.shape, t.stride(), t.storage_offset()).copy_(t)


def make_spec(case, precision, device, big):
    """A bucket of the case's algorithm in ``precision`` over shapes(big), states zero (torch's
    start), the weights mode's list from fp32 truths: master = truth, p = rn(truth),
    c = rn(truth - p)."""
    name, flags, _ = CASES[case]
    algo = ALGORITHMS[name]
    param_dtype, state_dtype, weights, seeded = precision
    truths = [laid_out_like(t, F64 if param_dtype == F64 else F32, device) for t in shapes(big)]
    params = [torch.nn.Parameter(laid_out_like(t, param_dtype, device)) for t in truths]
    states = [[torch.zeros_like(p, dtype=state_dtype) for p in params]
              for _ in algo.state_names(algo.flags_word(flags))]
    if weights == MASTER:
        states.append([t.clone() for t in truths])
    if weights == KAHAN:
        states.append([(t - p.detach().float()).to(param_dtype) for t, p in zip(truths, params)])
    return BucketSpec(
        device=torch.device(device), dtype=param_dtype, flags=algo.flags_word(flags),
        params=params, states=states,
        steps=[torch.zeros((), device=device) for _ in params],
        group_index=[i % 2 for i in range(len(params))], weights=weights,
        seeds=[(0x9E3779B9 * (i + 1)) % (1 << 32) for i in range(len(params))] if seeded else [])


def clone_spec(spec):
    def copy(t):
        return laid_out_like(t.detach(), t.dtype, t.device)
    return BucketSpec(
        device=spec.device, dtype=spec.dtype, flags=spec.flags,
        params=[torch.nn.Parameter(copy(p)) for p in spec.params],
        states=[[copy(s) for s in states] for states in spec.states],
        steps=[s.clone() for s in spec.steps], group_index=list(spec.group_index),
        weights=spec.weights, seeds=list(spec.seeds))


def hp_table(case, device):
    name, _, row = CASES[case]
    columns = ALGORITHMS[name].column_names
    rows = torch.zeros(2, NUM_COLS, dtype=F64)
    for g in range(2):
        rows[g, :len(columns)] = torch.tensor([row[c] for c in columns], dtype=F64)
    rows[1, 0] /= 2
    return rows.to(device)


def set_grads(specs, step):
    """The same grads on every spec, in its params' dtype, laid out as empty_like lays them out
    (a param with gaps gets a contiguous grad); NO_GRAD's param has none."""
    for i in range(len(specs[0].params)):
        g = torch.randn(specs[0].params[i].shape, dtype=F64)
        for spec in specs:
            p = spec.params[i]
            p.grad = None if (step, i) == NO_GRAD else torch.empty_like(p.detach()).copy_(g)


def sync(ref, ours):
    """ref's params, states and counters := ours. Each step is compared from the same inputs: a
    state that fp32 math differing by a fused multiply-add rounds to the other neighbour (one
    ulp of bf16, in ~2^-16 of the elements) would move every later step of its param, by more
    than fp32 tolerances (Lion's sign can flip)."""
    with torch.no_grad():
        for a, b in zip(ref.params + ref.steps, ours.params + ours.steps):
            a.copy_(b)
        for states_a, states_b in zip(ref.states, ours.states):
            for a, b in zip(states_a, states_b):
                a.copy_(b)


def assert_near(actual, expected, what):
    """fp16/bf16 within LOW_PRECISION_ULPS of their dtype (one step's rounding of fp32 values
    that agree to fp32 rounding; stochastic rounding is monotone in the fp32 bits, so it too
    lands at most one ulp away), fp32/fp64 within tests/tolerances.py's TOLERANCE."""
    if actual.dtype in LOW:
        assert_within_ulps(actual.detach(), expected.detach(), LOW_PRECISION_ULPS, what)
    else:
        assert_close(actual.detach(), expected.detach(), what)


def compare(ours, ref, num_states, where):
    for i, (p, q) in enumerate(zip(ours.params, ref.params)):
        at = f"{where} params[{i}] {tuple(p.shape)}"
        assert torch.equal(ours.steps[i], ref.steps[i]), f"{at}: step counter"
        assert_near(p, q, at)
        for k in range(num_states):
            a, b = ours.states[k][i], ref.states[k][i]
            assert_near(a, b, f"{at} states[{k}]")
            if ours.seeds and a.numel():
                differ = (a.view(torch.int16) != b.view(torch.int16)).double().mean().item()
                assert differ <= SR_MISMATCH, f"{at} states[{k}]: {differ:.1%} of the bits differ"
        if ours.weights == MASTER:
            assert_close(ours.states[-1][i], ref.states[-1][i], f"{at} master")
            assert torch.equal(p.detach(), ours.states[-1][i].to(p.dtype)), f"{at}: p != rn(master)"
        if ours.weights == KAHAN:
            # p + c, not c alone: where p rounds to the other neighbour, c changes sign
            assert_close(p.detach().float() + ours.states[-1][i].float(),
                         q.detach().float() + ref.states[-1][i].float(), f"{at} p + c")


def run_case(backend, device, case, precision, big=(1 << 20) + 3):
    """STEPS steps of ``backend`` (a module of fusedopt.backends) against the reference's on the
    same device, each from the same inputs (sync), compared after each step."""
    name, flags, _ = CASES[case]
    algo = ALGORITHMS[name]
    ours = make_spec(case, precision, device, big)
    ref = clone_spec(ours)
    handle = backend.make_bucket(ours)
    hp = hp_table(case, device)
    for step in range(STEPS):
        sync(ref, ours)
        set_grads([ours, ref], step)
        with torch.no_grad():
            backend.step(handle, hp, algo, ours.flags)
            reference.step(ref, hp, algo, ours.flags)
        compare(ours, ref, len(algo.state_names(ours.flags)), f"{case} step {step}")


@pytest.fixture(autouse=True, scope="module")
def _cuda_backend_usable():
    # a visible GPU with an unusable backend is a failure, not a skip
    reason = backends.unavailable_reason("cuda")
    assert reason is None, f"a CUDA device is visible but backend='cuda' is not usable: {reason}"


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, precision):
    run_case(backends._module("cuda"), "cuda", case, precision)


def run_bitwise(backend, device):
    """Stochastically rounded bf16 momentum buffers beside fp32 params, bit for bit: SGD with
    momentum 0.5, dampening 0, lr 0.25, no weight decay, grads k/1024 with k odd in [-511, 511].
    At step t (from 1) every buffer value is then a multiple of 2^-(9 + t) below 2 in magnitude
    (and so is its bf16 rounding, stochastic or not): at most 18 significant bits over the
    STEPS + 3 = 8 steps, so buf = 0.5*buf + g and lr*buf are exact in fp32, and p - lr*buf rounds
    once, on both sides and with or without a fused multiply-add. Equal fp32 inputs must give equal bits (Note
    [stochastic rounding]); element indices cross a chunk (70,000 elements) and follow the
    row-major order of a transposed param."""
    sgd = ALGORITHMS["sgd"]
    flags = sgd.flags_word({"momentum": True})
    layouts = [torch.randn(70_000), torch.randn(33, 17).t(), torch.randn(5)]
    ours = BucketSpec(
        device=torch.device(device), dtype=F32, flags=flags,
        params=[torch.nn.Parameter(laid_out_like(t, F32, device)) for t in layouts],
        steps=[torch.zeros((), device=device) for _ in layouts], group_index=[0, 0, 0],
        seeds=[12345, 0, (1 << 32) - 1])
    ours.states = [[torch.zeros_like(p, dtype=BF16) for p in ours.params]]
    ref = clone_spec(ours)
    handle = backend.make_bucket(ours)
    hp = torch.zeros(1, NUM_COLS, dtype=F64)
    hp[0, :4] = torch.tensor([0.25, 0.0, 0.5, 0.0], dtype=F64)   # lr, wd, momentum, dampening
    hp = hp.to(device)
    for step in range(STEPS + 3):
        for p, q in zip(ours.params, ref.params):
            k = torch.randint(-256, 256, p.shape) * 2 + 1
            p.grad = laid_out_like(k.double() / 1024, F32, device)
            q.grad = p.grad.clone()
        with torch.no_grad():
            backend.step(handle, hp, sgd, flags)
            reference.step(ref, hp, sgd, flags)
        for i in range(len(layouts)):
            assert torch.equal(ours.states[0][i].view(torch.int16),
                               ref.states[0][i].view(torch.int16)), f"step {step} buffer {i}"
            assert torch.equal(ours.params[i], ref.params[i]), f"step {step} param {i}"


def test_stochastic_rounding_is_the_references_bit_for_bit():
    run_bitwise(backends._module("cuda"), "cuda")


if __name__ == "__main__":
    # the harness with the reference on both sides, on the CPU (small tensors): every mode of
    # two algorithms, and the bitwise test
    torch.manual_seed(0)
    for case in ("adamw", "sgd-momentum"):
        for precision, name in zip(PRECISIONS, PRECISION_IDS):
            run_case(reference, "cpu", case, precision, big=70_000)
            print(f"ok {case} {name}")
    run_bitwise(reference, "cpu")
    print("ok bitwise")
