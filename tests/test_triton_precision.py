"""The Triton backend's precision modes (Note [precision modes], Note [stochastic rounding],
docs/internals.md) against the reference backend, on BucketSpecs built directly: every
algorithm in param dtype x state dtype x weights mode, with and without stochastic rounding;
the rounding itself bitwise; the combinations the backend refuses.

Like tests/test_triton.py, it needs a GPU or TRITON_INTERPRET=1 (test_triton.py's
``test_rerun_under_the_interpreter`` reruns this file with it set).
"""
import pytest
import torch

from fusedopt import _engine, _hparams
from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import reference
from test_triton import DEVICE, needs_triton, tb
from tolerances import LOW_PRECISION_ULPS, assert_close, assert_within_ulp, assert_within_ulps

STEPS = 4
FP64, FP32, FP16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
PLAIN, MASTER, KAHAN = _engine.PLAIN, _engine.MASTER, _engine.KAHAN
SEEDS = [0, 2 ** 32 - 1, 12345, 987654321, 31337, 7]       # one per param of make_bucket


# (id, algorithm, flags, hyper-parameters): every algorithm, with its state-heavy options
CASES = [
    ("adam-amsgrad", "adam", dict(amsgrad=True),
     dict(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adamw", "adam", dict(decoupled=True),
     dict(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("sgd-momentum", "sgd", dict(momentum=True),
     dict(lr=0.05, weight_decay=0.01, momentum=0.9, dampening=0.1)),
    ("sgd-nesterov", "sgd", dict(momentum=True, nesterov=True),
     dict(lr=0.05, momentum=0.9, dampening=0.0)),
    ("lion", "lion", {}, dict(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.99)),
    ("lars", "lars", dict(momentum=True),
     dict(lr=0.1, weight_decay=1e-3, momentum=0.9, dampening=0.0, eps=1e-8, eta=0.02)),
    ("lamb", "lamb", dict(bias_correction=True, grad_averaging=True, decoupled=True),
     dict(lr=1e-2, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-6)),
]

# Note [precision modes]: the state dtypes beside each param dtype; master and kahan weights for
# fp16/bf16 params; stochastic rounding for bf16 states
ALLOWED = {FP64: (FP64,), FP32: (FP32, BF16), FP16: (FP16, FP32, BF16), BF16: (BF16, FP32)}
# (param dtype, state dtype, weights mode, stochastic rounding)
ALL_MODES = [(param, state, weights, stochastic) for param, states in ALLOWED.items()
             for state in states
             for weights in ((PLAIN, MASTER, KAHAN) if param in (FP16, BF16) else (PLAIN,))
             for stochastic in ((False, True) if state == BF16 else (False,))]
# every param dtype, state dtype, weights mode and rounding at least once each, and their mixes
MODES = [(FP32, FP32, PLAIN, False), (FP32, BF16, PLAIN, True), (FP16, FP32, MASTER, False),
         (FP16, BF16, KAHAN, True), (BF16, FP32, KAHAN, False), (BF16, BF16, MASTER, True),
         (FP16, FP16, KAHAN, False), (BF16, BF16, PLAIN, False)]

# Sizes around the blocks of 1024 (0 still counts a step), a transposed (dense, non-contiguous)
# view that the kernels walk (with seeds: through contiguous copies), and a strided slice (not
# dense) that steps through the reference backend inside the Triton step.
SHAPES = [(0,), (1,), (33,), (5000,)]


def _name(dtype):
    return str(dtype).replace("torch.", "").replace("bfloat", "bf").replace("float", "fp")


def mode_id(mode):
    param, state, weights, stochastic = mode
    return "-".join([_name(param), _name(state), ("plain", "master", "kahan")[weights]]
                    + ["sr"] * stochastic)


def make_params(dtype, shapes=SHAPES):
    """Random params of ``shapes`` on DEVICE, then a transposed view and a strided slice."""
    params = [torch.randn(shape, device=DEVICE).to(dtype) for shape in shapes]
    params.append(torch.randn(40, 30, device=DEVICE).to(dtype).t())
    params.append(torch.randn(130, device=DEVICE).to(dtype)[::2])
    return params


def make_bucket(algo, flags, params, state_dtype, weights, stochastic, states=None):
    """A BucketSpec as fusedopt/optimizer.py packs one: the algorithm's states (zeros, laid out
    like their params), then the weights mode's list."""
    if states is None:
        states = [[torch.zeros_like(p, dtype=state_dtype) for p in params]
                  for _ in algo.state_names(flags)]
        if weights == MASTER:
            states.append([p.float() for p in params])
        elif weights == KAHAN:
            states.append([torch.zeros_like(p) for p in params])
    return _engine.BucketSpec(DEVICE, params[0].dtype, flags, params=params, states=states,
                              steps=[torch.zeros((), device=DEVICE) for _ in params],
                              group_index=[0] * len(params), weights=weights,
                              seeds=SEEDS[:len(params)] if stochastic else [])


def twin(spec):
    """An identical copy of ``spec`` (same strides), for the reference backend."""
    def clone(t):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                   device=t.device).copy_(t)
    return _engine.BucketSpec(spec.device, spec.dtype, spec.flags,
                              params=[clone(p) for p in spec.params],
                              states=[[clone(s) for s in states] for states in spec.states],
                              steps=[s.clone() for s in spec.steps],
                              group_index=list(spec.group_index), weights=spec.weights,
                              seeds=list(spec.seeds))


def hparams(algo, values):
    hp = torch.zeros(1, _hparams.NUM_COLS, dtype=torch.float64, device=DEVICE)
    for name, value in values.items():
        hp[0, algo.column_names.index(name)] = value
    return hp


def set_grads(specs, make):
    for i, p in enumerate(specs[0].params):
        grad = make(p)
        for spec in specs:
            spec.params[i].grad = grad.clone()


def assert_states_close(actual, expected, what):
    """fp32/fp64 to the tolerance table; fp16/bf16 to one ulp of their dtype (the fp32 values
    they round may differ by an ulp of the operands: relative to the result more where they
    nearly cancel, hence the table's absolute floor), and bitwise in nearly every element: from
    the same fp32 value both backends round to the same bits (stochastically: with the same
    random bits), so a wrong key or index shows as a mismatch in about a third of them."""
    if actual.dtype not in (torch.float16, torch.bfloat16):
        assert_close(actual, expected, what)
        return
    assert_within_ulp(actual, expected, what)
    if actual.numel() >= 100:
        differ = (actual.view(torch.int16) != expected.view(torch.int16)).float().mean().item()
        assert differ <= 0.01, f"{what}: {differ:.1%} of the elements not bitwise equal"


def compare(ours, theirs, num_states, where):
    """Every param and state of two buckets, and the step counters. Kahan weights: the param to
    one ulp and the value it stands for, param plus compensation, to fp32 rounding (where the
    params round apart the compensations differ by about a param ulp)."""
    for i, (p, q) in enumerate(zip(ours.params, theirs.params)):
        what = f"{where}: params[{i}] {tuple(p.shape)}"
        assert ours.steps[i].item() == theirs.steps[i].item(), f"{what}: step counter"
        if p.dtype in (torch.float16, torch.bfloat16):
            assert_within_ulps(p.detach(), q.detach(), LOW_PRECISION_ULPS, what)
        else:
            assert_close(p.detach(), q.detach(), what)
        if ours.weights == KAHAN:
            c, d = ours.states[-1][i], theirs.states[-1][i]
            assert_close(p.detach().float() + c.float(), q.detach().float() + d.float(),
                         f"{what} + its compensation")
        elif ours.weights == MASTER:
            assert_close(ours.states[-1][i], theirs.states[-1][i], f"{what}: master")
        for k in range(num_states):
            assert_states_close(ours.states[k][i], theirs.states[k][i], f"{what}: states[{k}]")


def start_from_same_states(ours, theirs):
    """Copy our params and states into the reference's bucket before a step. An fp16/bf16
    value one ulp apart (the fp32 math differs by an ulp in rare lanes: Note [stochastic
    rounding]) would move every later step of its param; compared from the same values, each
    step agrees to the tolerances above."""
    for p, q in zip(ours.params, theirs.params):
        q.detach().copy_(p.detach())
    for states, their_states in zip(ours.states, theirs.states):
        for s, t in zip(states, their_states):
            t.copy_(s)


# every algorithm in MODES; Adam with amsgrad (three states: every state list's key) in the others
RUNS = ([(case, mode) for case in CASES for mode in MODES]
        + [(CASES[0], mode) for mode in ALL_MODES if mode not in MODES])


@needs_triton
@pytest.mark.parametrize("case,mode", RUNS, ids=[f"{c[0]}-{mode_id(m)}" for c, m in RUNS])
def test_matches_reference(case, mode):
    """Params (masters, compensations) and every state after each of STEPS steps, against the
    reference backend's step of an identical bucket."""
    torch.manual_seed(0)
    case, name, flags, values = case
    param_dtype, state_dtype, weights, stochastic = mode
    algo = ALGORITHMS[name]
    word = algo.flags_word(flags)
    ours = make_bucket(algo, word, make_params(param_dtype), state_dtype, weights, stochastic)
    theirs = twin(ours)
    handle, hp = tb.make_bucket(ours), hparams(algo, values)
    for step in range(STEPS):
        start_from_same_states(ours, theirs)
        set_grads([ours, theirs], lambda p: torch.randn(p.shape, device=DEVICE).to(p.dtype))
        tb.step(handle, hp, algo, word)
        reference.step(theirs, hp, algo, word)
        compare(ours, theirs, len(algo.state_names(word)), f"{case} {mode_id(mode)} step {step}")


@needs_triton
def test_stochastic_rounding_is_bitwise():
    """SGD with momentum 0.5, no dampening, on fp32 params with stochastically rounded bf16
    momentum buffers: grads, params and lr are small dyadic numbers, so the fp32 math is exact
    on both backends and the rounding alone decides the bits, which must be the reference's
    (the key of each tensor and step, the row-major element index) after every step."""
    torch.manual_seed(0)
    algo = ALGORITHMS["sgd"]
    word = algo.flags_word(dict(momentum=True))
    hp = hparams(algo, dict(lr=2.0 ** -4, momentum=0.5, dampening=0.0))
    params = [(p * 64).round() / 64 for p in make_params(FP32)]
    ours = make_bucket(algo, word, params, BF16, PLAIN, True)
    theirs, nearest = twin(ours), twin(ours)
    nearest.seeds = []
    handle = tb.make_bucket(ours)
    for step in range(STEPS):
        set_grads([ours, theirs, nearest],
                  lambda p: torch.randint(-1024, 1024, p.shape, device=DEVICE).float() / 1024)
        tb.step(handle, hp, algo, word)
        reference.step(theirs, hp, algo, word)
        reference.step(nearest, hp, algo, word)
        for i, (p, q) in enumerate(zip(ours.params, theirs.params)):
            what = f"step {step} params[{i}] {tuple(p.shape)}"
            assert torch.equal(p.detach(), q.detach()), what
            assert torch.equal(ours.states[0][i].view(torch.int16),
                               theirs.states[0][i].view(torch.int16)), f"{what}: momentum buffer"
    rounded_apart = [not torch.equal(s, t) for s, t in zip(ours.states[0], nearest.states[0])]
    assert sum(rounded_apart) >= 3, "the buffers need rounding, and not only to nearest"


@needs_triton
def test_staged_params_skip_like_the_others():
    """A non-contiguous param with seeds steps through contiguous copies (kernels walk memory
    order, the bits follow the row-major index): found_inf, and a grad that is None, leave it,
    its states and its counter as they were, like every walked param."""
    torch.manual_seed(0)
    algo = ALGORITHMS["adam"]
    spec = make_bucket(algo, 0, make_params(BF16, [(33,)])[:2], BF16, KAHAN, True)
    handle, hp = tb.make_bucket(spec), hparams(algo, dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8))
    assert len(handle.staged) == 4, "the transposed param, its two states, its compensation"

    def snapshot():
        return [t.clone() for t in spec.params + [s for states in spec.states for s in states]
                + spec.steps]
    set_grads([spec], lambda p: torch.randn(p.shape, device=DEVICE).to(p.dtype))
    before = snapshot()
    tb.step(handle, hp, algo, 0, found_inf=torch.ones((), device=DEVICE))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot()))
    spec.params[1].grad = None
    tb.step(handle, hp, algo, 0)
    after = snapshot()
    assert not torch.equal(after[0], before[0]), "the contiguous param steps"
    assert all(torch.equal(after[k], before[k]) for k in range(1, len(after), 2))


@needs_triton
def test_state_dtypes_the_note_allows():
    """Every (param dtype, state dtype) pair: a bucket builds where ALLOWED has it, else the
    validator names the state and the dtypes it expects."""
    algo = ALGORITHMS["sgd"]
    for param_dtype in ALLOWED:
        for state_dtype in ALLOWED:
            params = [torch.zeros(2, device=DEVICE, dtype=param_dtype)]
            spec = make_bucket(algo, algo.flags_word(dict(momentum=True)), params, state_dtype,
                               PLAIN, False)
            if state_dtype in ALLOWED[param_dtype]:
                tb.make_bucket(spec)
            else:
                with pytest.raises(TypeError, match=r"states\[0\]\[0\]: expected a state dtype"):
                    tb.make_bucket(spec)


def _bad(**change):
    """A valid Adam bucket (bf16 params, bf16 states, master weights, seeds) with ``change``
    applied by name: param_dtype, state_dtype, extra_dtype, weights, seeds, drop_list."""
    algo = ALGORITHMS["adam"]
    params = [torch.zeros(3, device=DEVICE, dtype=change.get("param_dtype", BF16))]
    state_dtype = change.get("state_dtype", BF16)
    states = [[torch.zeros(3, device=DEVICE, dtype=state_dtype)] for _ in range(2)]
    states.append([torch.zeros(3, device=DEVICE, dtype=change.get("extra_dtype", FP32))])
    if change.get("drop_list"):
        states.pop(0)
    if change.get("mixed"):
        states[1][0] = states[1][0].float()
    spec = make_bucket(algo, 0, params, state_dtype, change.get("weights", MASTER), True, states)
    spec.seeds = change.get("seeds", spec.seeds)
    return spec


@needs_triton
@pytest.mark.parametrize("change,error,message", [
    (dict(weights=3), ValueError, r"weights: expected 0 \(plain\), 1 \(master\) or 2 \(kahan\)"),
    (dict(param_dtype=FP32, state_dtype=FP32, seeds=[]), TypeError,
     r"weights=1 \(master\): expected float16 or bfloat16 params, got torch.float32"),
    (dict(extra_dtype=BF16), TypeError,
     r"states\[2\]\[0\] \(the fp32 master copies of weights=1 \(master\)\): expected "
     r"torch.float32, got torch.bfloat16"),
    (dict(weights=KAHAN), TypeError,
     r"states\[2\]\[0\] \(the compensations of weights=2 \(kahan\)\): expected torch.bfloat16"),
    (dict(state_dtype=FP16, seeds=[]), TypeError,
     r"states\[0\]\[0\]: expected a state dtype of torch.bfloat16 or torch.float32 beside "
     r"torch.bfloat16 params, got torch.float16"),
    (dict(mixed=True, seeds=[]), TypeError,
     r"states: expected one dtype for all of the algorithm's states, got torch.bfloat16 "
     r"\(states\[0\]\[0\]\), torch.float32 \(states\[1\]\[0\]\)"),
    (dict(state_dtype=FP32), TypeError, r"seeds: stochastic rounding writes bfloat16 states; "
     r"expected bfloat16 states, got torch.float32 \(states\[0\]\[0\]\)"),
    (dict(seeds=[1, 2]), ValueError, r"seeds: expected one per param \(1\) or none, got 2"),
    (dict(seeds=[2 ** 32]), ValueError, r"seeds\[0\]: expected an integer in \[0, 2\^32\)"),
    (dict(drop_list=True), ValueError, r"states: expected 3 state lists for adam with weights=1 "
     r"\(master\) \(exp_avg, exp_avg_sq, the fp32 master copies\), got 2"),
], ids=["weights", "master-fp32", "master-dtype", "kahan-dtype", "state-dtype", "mixed-states",
        "seeds-dtype", "seeds-count", "seed-range", "state-lists"])
def test_bad_combinations_raise(change, error, message):
    """check_bucket, the backend's one validator: each error names the field and what it
    expects (at make_bucket, or for the algorithm's state lists at the first step)."""
    algo = ALGORITHMS["adam"]
    spec = _bad(**change)
    for p in spec.params:
        p.grad = torch.zeros_like(p)
    with pytest.raises(error, match=message):
        tb.step(tb.make_bucket(spec), hparams(algo, dict(lr=1.0)), algo, 0)
