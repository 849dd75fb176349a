"""The Triton backend against the reference backend (and the cuda backend on a GPU).

Without a GPU the kernels run under Triton's interpreter on CPU tensors, which needs
TRITON_INTERPRET=1 before triton is first imported: scripts/test.sh exports it when no GPU is
present. Run without it (plain ``pytest``), every check here would skip, so
``test_rerun_under_the_interpreter`` reruns this file in a subprocess with it set instead.
Shapes are small: the interpreter runs each program in numpy, one after the other.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch

import fusedopt
from fusedopt import backends
from fusedopt._engine import KAHAN, MASTER, PLAIN
from fusedopt.algorithms import ALGORITHMS, optimizer_classes
from fusedopt.backends import triton as tb      # Note [import never fails]
from helpers import (CASES, CASE_IDS, TORCH, compare_master_runs, compare_runs, group_overrides,
                     make_params, set_grads, split_groups, start_from_same_states)
from test_algorithms import NEW_CASES
from tolerances import LOW_PRECISION_FACTOR, assert_close, max_error

try:
    import triton
    TRITON_ERROR = None
except Exception as exc:      # noqa: BLE001 (any failure to import means: no triton here)
    TRITON_ERROR = exc

if TRITON_ERROR is None:
    @triton.jit
    def _probe():
        pass
    INTERPRETED = not isinstance(_probe, triton.runtime.jit.JITFunction)
else:
    INTERPRETED = False
# Where triton runs (a GPU, or its interpreter), fusedopt's Triton backend must load: if it does
# not, every test below fails with the backend's own reason (the constructors raise it), instead of
# skipping. They skip only where triton itself is missing or has nothing to run on.
RUNS_HERE = TRITON_ERROR is None and (INTERPRETED or torch.cuda.is_available())
needs_triton = pytest.mark.skipif(
    not RUNS_HERE, reason=f"triton is not importable ({TRITON_ERROR!r})" if TRITON_ERROR
    else "no GPU and no TRITON_INTERPRET=1: test_rerun_under_the_interpreter runs these")
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
ORACLES = ["reference"] + (["cuda"] if "cuda" in fusedopt.available_backends()
                           and DEVICE.type == "cuda" else [])
KERNELS = {}        # the real kernels, before record_launches stands in for them
if hasattr(tb, "kernels"):      # imported (without a GPU or the interpreter, unusable here)
    KERNELS = {name: getattr(tb.kernels, name) for name in ("update_kernel", "norm_kernel")}

# (class name, options, three groups with different hyper-parameters): every option of Adam and
# SGD (helpers.CASES) and the new classes' cases (test_algorithms.NEW_CASES)
ALL_CASES = ([(f"Fused{name}", kwargs, group_overrides(name, kwargs)) for name, kwargs in CASES]
             + [(name, kwargs, groups) for name, cases in NEW_CASES.items()
                for kwargs, groups in cases])
ALL_IDS = ([f"Fused{i}" for i in CASE_IDS]
           + [f"{name}-{i}" for name, cases in NEW_CASES.items() for i in range(len(cases))])

# fp32 blocks are 1024 elements, fp64 ones 512: (2049,) spans 3 resp. 5 blocks with a ragged
# tail; (0,) still counts a step; (12, 10) is a transposed (non-contiguous, dense) view.
SHAPES = [(0,), (1,), (2049,), (7,), (3, 5), (12, 10)]
NONCONTIGUOUS = (5,)
STEPS = 5


def on_device(params, dtype=None):
    """Copies on DEVICE with the same strides (a transposed view stays transposed)."""
    out = []
    for p in params:
        c = torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype, device=DEVICE)
        out.append(torch.nn.Parameter(c.copy_(p.detach())))
    return out


def torch_norm(tensors, norm_type):
    """torch's norm of all elements taken in fp64, in the dtype of fusedopt's norms (Note [norm
    dtype], fusedopt/backends/__init__.py): float64 if a tensor is fp64, else float32."""
    flat = torch.cat([t.detach().cpu().double().reshape(-1) for t in tensors])
    fp64 = any(t.dtype == torch.float64 for t in tensors)
    return torch.linalg.vector_norm(flat, norm_type).to(torch.float64 if fp64 else torch.float32)


def pair(name, kwargs, params, groups, oracle):
    """(our params, a triton optimizer of class ``name`` over them, the twin's, the twin)."""
    cls = optimizer_classes()[name]
    ours, theirs = on_device(params), on_device(params)
    return (ours, cls(split_groups(ours, groups), backend="triton", **kwargs),
            theirs, cls(split_groups(theirs, groups), backend=oracle, **kwargs))


def test_every_algorithm_has_cases():
    """A new descriptor in fusedopt.algorithms needs its Triton kernel and its cases here."""
    covered = {optimizer_classes()[name].ALGORITHM.name for name, _, _ in ALL_CASES}
    assert covered == set(ALGORITHMS)
    assert set(tb.KERNEL_NAMES) == set(ALGORITHMS)


@needs_triton
def test_backend_loads_where_triton_runs():
    assert tb.unavailable_reason() is None, tb.unavailable_reason()


@needs_triton
@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,kwargs,groups", ALL_CASES, ids=ALL_IDS)
def test_matches_oracle_over_steps(oracle, dtype, name, kwargs, groups):
    """Every option of every algorithm, three groups, None grads (also on the first step)."""
    params = make_params(SHAPES, dtype, NONCONTIGUOUS)
    ours, opt, theirs, opt_ref = pair(name, kwargs, params, groups, oracle)
    for step in range(STEPS):
        set_grads([ours, theirs], step)
        opt.step()
        opt_ref.step()
        compare_runs(ours, theirs, opt, opt_ref, f"step {step}")


@needs_triton
@pytest.mark.parametrize("name,kwargs", [
    ("FusedAdamW", dict(amsgrad=True, weight_decay=0.1)),
    ("FusedAdam", dict(weight_decay=0.1, maximize=True)),
    ("FusedSGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("FusedLion", dict(lr=1e-3, weight_decay=0.1)),
    ("FusedLARS", dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    ("FusedLAMB", dict(lr=1e-2, trust_clip=True))],
    ids=["AdamW-amsgrad", "Adam-maximize", "SGD-nesterov", "Lion", "LARS", "LAMB"])
def test_grad_scale_clip_and_found_inf(name, kwargs):
    """AMP unscale and the deferred clip coefficient inline; found_inf skips on device (both
    stages of a two-stage algorithm: its counters advance once per step taken)."""
    params = make_params(SHAPES, torch.float32, NONCONTIGUOUS)
    ours, opt, theirs, opt_ref = pair(name, kwargs, params, [{}, {"lr": 0.003}], "reference")
    for step in range(4):
        set_grads([ours, theirs], step, none_every=0)
        for o, ps in ((opt, ours), (opt_ref, theirs)):
            for p in ps:
                p.grad.mul_(1024.0)
            o.grad_scale = torch.tensor(1024.0, device=DEVICE)
            o.found_inf = torch.tensor(float(step == 2), device=DEVICE)
            fusedopt.clip_grad_norm_(ps, max_norm=0.5)
        before = [p.detach().clone() for p in ours]
        opt.step()
        opt_ref.step()
        compare_runs(ours, theirs, opt, opt_ref, f"step {step}")
        if step == 2:        # skipped: not a bit changed
            assert all(torch.equal(a, p.detach()) for a, p in zip(before, ours))
    for o in (opt, opt_ref):
        del o.grad_scale, o.found_inf


@needs_triton
def test_layouts_the_kernel_cannot_walk():
    """A non-dense param (its states are made contiguous) steps through the reference path in
    the same call; a grad laid out unlike its transposed param is copied into its layout."""
    base = make_params([(4, 6), (9, 5)])
    strided = torch.nn.Parameter(base[0].detach()[:, ::2])           # not dense
    transposed = torch.nn.Parameter(base[1].detach().t())            # dense, not contiguous
    plain = make_params([(3000,)])[0]
    for name, kwargs in [("FusedAdamW", dict(amsgrad=True)),
                         ("FusedSGD", dict(momentum=0.9, lr=0.1)), ("FusedLAMB", {})]:
        ours, opt, theirs, opt_ref = pair(name, kwargs, [strided, transposed, plain], [{}],
                                          "reference")
        for step in range(4):
            set_grads([ours, theirs], step, none_every=0)
            ours[1].grad = ours[1].grad.contiguous()     # strides differ from the param's
            assert_close(opt.clip_grad_norm_(1.0).cpu(), torch_norm([p.grad for p in ours], 2.0),
                         f"{name} step {step} norm")    # the strided grad is not dense either
            fusedopt.clip_grad_norm_(theirs, 1.0)
            opt.step()
            opt_ref.step()
        compare_runs(ours, theirs, opt, opt_ref, f"{name} after 4 steps")
        assert opt._buckets[0].handle.fallback is not None


@needs_triton
@pytest.mark.parametrize("name,kwargs", [("FusedAdamW", dict(amsgrad=True)),
                                         ("FusedSGD", dict(momentum=0.9, lr=0.1)),
                                         ("FusedLARS", dict(momentum=0.9, lr=0.1))],
                         ids=["AdamW", "SGD", "LARS"])
def test_moved_storage_and_misaligned_views(name, kwargs):
    """``p.data = ...`` and a state's ``.data = ...`` between steps move the storage the table
    points at (the old one is freed): the next step must use the new one. Views at odd element
    offsets (not 16-byte aligned) share the bucket with aligned tensors of full blocks (Note
    [alignment per tensor]); their grads are misaligned too. LARS: a two-stage algorithm's
    sums over several blocks of misaligned tensors."""
    flat = make_params([(2 * 4096 + 2048 + 9,)])[0].detach()
    params = [torch.nn.Parameter(flat[1:4097].clone()),                 # aligned, 2 full blocks
              torch.nn.Parameter(flat[4097:4097 + 4096]),               # offset 4097: misaligned
              torch.nn.Parameter(flat[3:3 + 2050])]                     # misaligned, ragged tail
    ours, opt, theirs, opt_ref = pair(name, kwargs, params, [{}], "reference")
    for p in ours:                       # pair() copies into fresh storage: re-misalign ours
        if p.data_ptr() % 16 == 0 and p is not ours[0]:
            buf = torch.empty(p.numel() + 1, dtype=p.dtype, device=p.device)[1:]
            p.data = buf.copy_(p.detach())
    assert [p.data_ptr() % 16 != 0 for p in ours] == [False, True, True]
    for step in range(4):
        set_grads([ours, theirs], step, none_every=0)
        for p in ours[1:]:               # misaligned grads
            g = torch.empty(p.numel() + 3, dtype=p.dtype, device=p.device)[3:]
            p.grad = g.copy_(p.grad)
        if step == 2:                    # storage moves: params and a state
            for p, q in zip(ours, theirs):
                p.data = p.detach().clone()
            state = opt.state[ours[0]]
            key = opt.ALGORITHM.state_names(opt._buckets[0].flags)[0]
            state[key].data = state[key].detach().clone()
        opt.step()
        opt_ref.step()
    compare_runs(ours, theirs, opt, opt_ref, f"{name} after moved storage")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))],
                         ids=["AdamW", "SGD-momentum"])
def test_low_precision_error_bound(dtype, algo, kwargs):
    """fp16/bf16 compute in fp32: error against an fp64 run <= 2x torch fused's (the table's
    LOW_PRECISION_FACTOR), as for the other backends."""
    master = make_params([(257,), (31, 9), (2100,)], torch.float64)
    oracle, low_ours = on_device(master), on_device(master, dtype)
    low_torch = [torch.nn.Parameter(p.detach().cpu().to(dtype)) for p in master]
    opts = [TORCH[algo](oracle, foreach=False, **kwargs),
            TORCH[algo](low_torch, fused=True, **kwargs),
            getattr(fusedopt, f"Fused{algo}")(low_ours, backend="triton", **kwargs)]
    for step in range(8):
        set_grads([oracle, low_torch, low_ours], step, none_every=0)
        for o in opts:
            o.step()
    oracle_cpu = [p.detach().cpu() for p in oracle]
    err_ours = max_error([p.detach().cpu() for p in low_ours], oracle_cpu)
    err_torch = max_error(low_torch, oracle_cpu)
    assert err_ours <= LOW_PRECISION_FACTOR * err_torch, (
        f"{dtype}: triton error {err_ours:.3g} > {LOW_PRECISION_FACTOR} x torch fused "
        f"{err_torch:.3g}")


# Adam amsgrad, AdamW, SGD plain, with dampening, nesterov; the first case of each new class
MASTER_CASES = [ALL_CASES[i] for i in (2, 5, 7, 9, 10)] + [
    (name, *cases[0]) for name, cases in NEW_CASES.items()]
MASTER_IDS = [ALL_IDS[i] for i in (2, 5, 7, 9, 10)] + [f"{name}-0" for name in NEW_CASES]


@needs_triton
@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,kwargs,groups", MASTER_CASES, ids=MASTER_IDS)
def test_master_weights_match_oracle(oracle, dtype, name, kwargs, groups):
    """master_weights=True (Note [master copy]): three groups, None grads, a transposed view.
    The kernels step the fp32 masters and write each param as its master's rounding without
    reading it: params overwritten with NaN before a step do not reach the update. Each step
    starts from our states (start_from_same_states): every transition is held to fp32 rounding."""
    params = make_params(SHAPES, dtype, NONCONTIGUOUS)
    ours, opt, theirs, opt_ref = pair(name, dict(kwargs, master_weights=True), params, groups,
                                      oracle)
    for step in range(STEPS):
        set_grads([ours, theirs], step)
        if step == STEPS - 1:
            for p in ours:
                if "master_param" in opt.state.get(p, {}):
                    p.detach().fill_(float("nan"))
        start_from_same_states(ours, opt, theirs, opt_ref)
        opt.step()
        opt_ref.step()
    # a param without a grad in the last step keeps the NaN: compare the stepped ones
    stepped = [i for i, p in enumerate(ours) if p.grad is not None]
    compare_master_runs([ours[i] for i in stepped], opt, [theirs[i] for i in stepped], opt_ref,
                        f"{name} {dtype} masters vs {oracle}")


@needs_triton
@pytest.mark.parametrize("name", ["FusedAdamW", "FusedLAMB"])
def test_master_weights_save_load_continue_is_bitwise(name):
    """state_dict carries the fp32 masters; a resumed run is bitwise the uninterrupted one (LAMB:
    a two-stage step is reproducible bit for bit, Note [two stages])."""
    cls = optimizer_classes()[name]
    base = make_params([(2049,), (3, 5)], torch.bfloat16)
    straight, first = on_device(base), on_device(base)
    opts = [cls(ps, backend="triton", master_weights=True) for ps in (straight, first)]
    for step in range(3):
        set_grads([straight, first], step, none_every=0)
        for o in opts:
            o.step()
    resumed = on_device(first)
    opt_resumed = cls(resumed, backend="triton", master_weights=True)
    opt_resumed.load_state_dict(copy.deepcopy(opts[1].state_dict()))
    for step in range(3, 6):
        set_grads([straight, resumed], step, none_every=0)
        opts[0].step()
        opt_resumed.step()
    for p, q in zip(straight, resumed):
        assert torch.equal(p.detach(), q.detach())
        for key, value in opts[0].state[p].items():
            assert torch.equal(value, opt_resumed.state[q][key]), key


@needs_triton
@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=["l2", "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16],
                         ids=["fp32", "fp64", "fp16"])
def test_bucket_norm_matches_reference(dtype, norm_type):
    """The optimizer's fused clip reads every grad of the bucket, params without state too.
    Checked against torch's vector_norm of every grad element in fp64."""
    params = make_params(SHAPES + [(5000,)], dtype, NONCONTIGUOUS)
    ours, opt, theirs, opt_ref = pair("FusedAdamW", {}, params, [{}, {"lr": 0.01}], "reference")
    for step in range(2):
        set_grads([ours, theirs], step)       # step 0: some params get no grad, stay pending
        want = torch_norm([p.grad for p in ours if p.grad is not None], norm_type)
        got = opt.clip_grad_norm_(1.0, norm_type)
        fusedopt.clip_grad_norm_(theirs, 1.0, norm_type)      # same clip for the twin's step
        assert got.dtype == want.dtype and got.device.type == DEVICE.type
        assert_close(got.cpu(), want, f"step {step} norm")
        opt.step()
        opt_ref.step()
    if dtype != torch.float16:      # the table has no fp16 tolerance; the norms are fp32
        compare_runs(ours, theirs, opt, opt_ref, "after the clipped steps")


@needs_triton
@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=["l2", "inf"])
def test_tensors_norm_mixed_dtypes_and_non_finite(norm_type):
    tensors = [torch.randn(3000, dtype=torch.float64, device=DEVICE),
               torch.randn(0, device=DEVICE), torch.randn(7, 9, device=DEVICE).t(),
               torch.randn(40, device=DEVICE)[::3], torch.randn(5, device=DEVICE).half()]
    # float64 (an fp64 tensor is in), fp32-accurate: fp32 tensors accumulate in fp32, as torch's
    # per-tensor norms of them are float32
    got, want = tb.tensors_norm(tensors, norm_type), torch_norm(tensors, norm_type)
    assert got.dtype == want.dtype == torch.float64
    assert_close(got.cpu().float(), want.float(), "finite")
    for bad in (float("inf"), float("nan")):
        tensors[2][1, 2] = bad
        got = tb.tensors_norm(tensors, norm_type).item()
        assert got != got if bad != bad else got == bad, f"{bad} in a grad gave norm {got}"
    assert tb.tensors_norm([], norm_type).item() == 0.0


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,kwargs", [("FusedLARS", dict(lr=0.1, weight_decay=1e-3)),
                                         ("FusedLAMB", dict(lr=1e-2, max_grad_norm=None))],
                         ids=["LARS", "LAMB"])
def test_two_stage_totals_and_reproducibility(name, kwargs, dtype):
    """Note [two stages]: stage 1 leaves each tensor's two sums in the handle's totals, its
    blocks' float64 partials added in block order (a tensor of 5000 fp32 elements has 5 blocks of
    1024, a ragged tail included; an empty one sums to 0); they equal the fp64 sums of the
    reference (LARS: |p|^2, |g|^2; LAMB: |p|^2 then the update's, checked through the step). The
    same step from the same state gives the same bits: no float atomics."""
    base = make_params([(5000,), (0,), (2049,), (3, 5)], dtype)
    runs = []
    for _ in range(2):
        params = on_device(base)
        opt = optimizer_classes()[name](params, backend="triton", **kwargs)
        for step in range(3):
            set_grads([params], step, none_every=0)
            before = [p.detach().double().cpu().clone() for p in params]
            grads = [p.grad.double().cpu() for p in params]
            opt.step()
        runs.append((params, opt))
        handle = opt._buckets[0].handle
        totals = handle.sums[1].cpu().view(-1, 2)
        for t, i in enumerate(handle.walked):       # walked params, in table order
            want = before[i].square().sum()
            assert_close(totals[t, 0], want, f"{name} |p|^2 of tensor {i}")
            if name == "FusedLARS":
                assert_close(totals[t, 1], grads[i].square().sum(), f"|g|^2 of tensor {i}")
    (a, opt_a), (b, opt_b) = runs
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


class Recorder:
    """Stands in for a kernel: records each launch as (kernel, args, kwargs), then runs it."""

    def __init__(self, kernel, seen, execute=True):
        self.kernel, self.seen, self.execute = kernel, seen, execute

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append((self.kernel, args, kwargs))
            if self.execute:
                self.kernel[grid](*args, **kwargs)
        return launch


def record_launches(setattr_, execute=True):
    seen = []
    for name, kernel in KERNELS.items():
        setattr_(tb.kernels, name, Recorder(kernel, seen, execute))
    return seen


def launch_name(kwargs):
    """``adam-0`` for an update launch of Adam's block math in stage 0, ``norm``."""
    if "UPDATE" not in kwargs:
        return "norm"
    return f"{kwargs['UPDATE'].fn.__module__.rsplit('.', 1)[-1]}-{kwargs['STAGE']}"


def specialise(kernel, args, kwargs, target):
    """What Triton's JIT (JITFunction.run) derives from a launch's arguments for ``target``:
    (jit function, compiler backend, bound arguments, specialization, options). The
    specialization and options are the key its kernel cache uses."""
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    jit = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)
    backend = make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    return (jit, backend) + tuple(binder(*args, **kwargs))


@needs_triton
def test_one_launch_per_bucket_and_no_recompilation(monkeypatch):
    """Shapes, lrs, weight decays, clip thresholds, group counts and table re-allocations are
    table contents: after warm-up, one launch per bucket (two for a two-stage algorithm) and no
    new kernel over 100 steps (12 under the interpreter) that change lr, weight decay and the
    clip threshold. Counted as the keys Triton's JIT caches kernels under, computed by Triton's
    own binder from the arguments of each launch: for the current GPU, or under the interpreter
    (which has no cache) for an sm_90 target."""
    import triton
    from triton.backends.compiler import GPUTarget
    target = (GPUTarget("cuda", 90, 32) if DEVICE.type == "cpu"
              else triton.runtime.driver.active.get_current_target())
    launches = record_launches(monkeypatch.setattr)

    def keys():
        return {str(specialise(kernel, args, kwargs, target)[3:]) + launch_name(kwargs)
                for kernel, args, kwargs in launches}

    def run(shapes, groups, steps, name="FusedAdamW"):
        params = on_device(make_params(shapes))
        opt = optimizer_classes()[name](split_groups(params, groups), backend="triton",
                                        lr=1e-3, weight_decay=0.1)
        for step in range(steps):
            set_grads([params], step, none_every=0)
            opt.clip_grad_norm_(0.5 + step % 3)                # clip threshold changes
            if step:
                opt.param_groups[0]["lr"] *= 0.95              # a scheduler's write
                opt.param_groups[-1]["weight_decay"] = 0.1 * (step % 2)   # on and off
            opt.step()
        return opt

    def compiled():        # kernels in Triton's JIT cache, this process's earlier tests included
        return {name: len(k.device_caches[torch.cuda.current_device()][0])
                for name, k in KERNELS.items()} if DEVICE.type == "cuda" else {}

    run([(3,), (5, 4)], [{}], 2)
    run([(3,), (5, 4)], [{}], 2, "FusedLARS")
    warm, warm_cache = keys(), compiled()
    assert len(warm) == 4, warm       # AdamW's update, LARS's two stages, the 2-norm
    launches.clear()
    steps = 100 if DEVICE.type == "cuda" else 12
    opt = run([(2049,), (1,), (0,), (17, 3), (700,)], [{}, {"lr": 0.1}, {"lr": 0.2}], steps)
    assert len(launches) == steps * 2, "one update and one norm launch per step and bucket"
    launches.clear()
    run([(2049,), (0,), (700,)], [{}, {"lr": 0.2}], 3, "FusedLARS")
    assert [launch_name(kw) for _, _, kw in launches] == ["norm", "lars-1", "lars-2"] * 3
    opt.add_param_group({"params": on_device(make_params([(33,)])), "lr": 1e-4})
    set_grads([[p for g in opt.param_groups for p in g["params"]]], 9, none_every=0)
    opt.clip_grad_norm_(1.0)          # a step without it is another flag (clip_coef None)
    opt.step()
    assert keys() <= warm, f"new specialisations: {keys() - warm}"
    assert compiled() == warm_cache, "Triton's JIT cache grew after warm-up"


@pytest.mark.skipif(TRITON_ERROR is not None, reason="triton is not importable")
def test_compiles_for_sm90_with_vector_accesses():
    """The interpreter runs Python, not Triton's compiler (which once rejected code the
    interpreter ran). A subprocess without TRITON_INTERPRET compiles what the backend launches
    for sm_90 (no GPU needed) and checks the PTX: see ``check_sm90_ptx``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import test_triton; test_triton.check_sm90_ptx()"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(__file__),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = [launches for launches, *_ in SM90_LAUNCHES]
    assert done.stdout.split() == " ".join(names[:1] + ["norm"] + names[1:]).split(), done.stdout


# (launch names, algorithm, flags, param dtype, state dtype, weights mode, stochastic rounding;
# Note [precision modes]): Adam with amsgrad (and a 2-norm), SGD with momentum, both with masters
# (Note [master copy]), Lion, LARS with momentum, LAMB with masters: both stages of the two-stage
# ones; then fp32 params with stochastically rounded bf16 states, and Kahan-summed bf16 params
# with fp32 (AdamW) or stochastically rounded bf16 (LAMB) states
_LAMB = dict(bias_correction=True, grad_averaging=True, decoupled=True)
SM90_LAUNCHES = [
    ("adam-0", "adam", dict(amsgrad=True, decoupled=True), torch.float32, torch.float32, PLAIN, 0),
    ("sgd-0", "sgd", dict(momentum=True, nesterov=True), torch.bfloat16, torch.bfloat16, PLAIN, 0),
    ("adam-0", "adam", dict(decoupled=True), torch.bfloat16, torch.bfloat16, MASTER, 0),
    ("sgd-0", "sgd", dict(momentum=True), torch.float16, torch.float16, MASTER, 0),
    ("lion-0", "lion", {}, torch.float32, torch.float32, PLAIN, 0),
    ("lars-1 lars-2", "lars", dict(momentum=True), torch.float32, torch.float32, PLAIN, 0),
    ("lamb-1 lamb-2", "lamb", _LAMB, torch.bfloat16, torch.bfloat16, MASTER, 0),
    ("sgd-0", "sgd", dict(momentum=True), torch.float32, torch.bfloat16, PLAIN, 1),
    ("adam-0", "adam", dict(decoupled=True), torch.bfloat16, torch.float32, KAHAN, 0),
    ("lamb-1 lamb-2", "lamb", _LAMB, torch.bfloat16, torch.bfloat16, KAHAN, 1)]


def check_sm90_ptx():
    """Launch the backend on CPU tensors with recording stand-ins (nothing runs), compile each
    launch for sm_90 and assert: 16-byte vector accesses on full blocks (ALIGNED,
    kernels/preamble.py), correctly rounded division and square roots, and the acq_rel counter
    of Note [step in one launch]."""
    import triton
    from triton.backends.compiler import GPUTarget
    from fusedopt import _engine, _hparams
    from fusedopt.backends import triton as backend_module
    global tb
    tb = backend_module
    launches = record_launches(setattr, execute=False)
    for k, (_, name, flags, dtype, state_dtype, weights, stochastic) in enumerate(
            SM90_LAUNCHES):
        algo = ALGORITHMS[name]
        flags = algo.flags_word(flags)
        params = [torch.zeros(4096, dtype=dtype), torch.zeros(3, dtype=dtype)]
        for p in params:
            p.grad = torch.zeros_like(p)
        states = [[torch.zeros_like(p, dtype=state_dtype) for p in params]
                  for _ in algo.state_names(flags)]
        extra = {MASTER: torch.float32, KAHAN: dtype}.get(weights)
        states += [[torch.zeros_like(p, dtype=extra) for p in params]] if extra else []
        spec = _engine.BucketSpec(torch.device("cpu"), dtype, flags, params=params,
                                  states=states, steps=[torch.zeros(()) for _ in params],
                                  group_index=[0, 0], weights=weights,
                                  seeds=[1, 2] if stochastic else [])
        handle = tb.make_bucket(spec)
        tb.step(handle, torch.zeros(1, _hparams.NUM_COLS, dtype=torch.float64), algo, flags)
        if k == 0:
            tb.bucket_norm(handle, float("inf"))
    target = GPUTarget("cuda", 90, 32)
    for kernel, args, kwargs in launches:
        jit, backend, bound, specialization, options = specialise(kernel, args, kwargs, target)
        options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound,
                                                               specialization, options)
        src = triton.compiler.ASTSource(jit, signature, constexprs, attrs)
        ptx = triton.compile(src, target=target, options=options.__dict__).asm["ptx"]
        name = launch_name(kwargs)
        assert "ld.global.v4.b32" in ptx, f"{name}: no 16-byte vector loads"
        assert "atom.global.gpu.acq_rel.add" in ptx, f"{name}: no acq_rel block counter"
        for approx in ("div.full.f32", "div.approx", "sqrt.approx"):
            assert approx not in ptx, f"{name}: {approx}"
        if name != "norm" and kwargs["STAGE"] != 1:    # stage 1 stores two sums per block
            assert "st.global.v4.b32" in ptx, f"{name}: no 16-byte vector stores"
        print(name, flush=True)


@needs_triton
def test_availability():
    assert tb.supports(DEVICE)
    assert not tb.supports(torch.device("cuda" if DEVICE.type == "cpu" else "cpu"))
    assert backends.resolve("auto", torch.device("cpu")).NAME != "triton"


@pytest.mark.parametrize("missing,reason", [
    ("triton", "triton could not be imported"),
    pytest.param("fusedopt.kernels", "triton imports, but fusedopt's Triton kernels",
                 marks=pytest.mark.skipif(TRITON_ERROR is not None, reason="no triton here"))],
    ids=["triton", "kernels"])
def test_import_never_fails(missing, reason):
    """Note [import never fails]: with triton, or fusedopt's kernels, unimportable, fusedopt
    imports, lists no triton and says which of the two is missing."""
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "import fusedopt; from fusedopt import backends\n"
            "assert 'triton' not in fusedopt.available_backends()\n"
            "print(backends.unavailable_reason('triton'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(reason), done.stdout


@pytest.mark.skipif(RUNS_HERE or TRITON_ERROR is not None,
                    reason="the checks above run in this process, or triton is missing")
def test_rerun_under_the_interpreter():
    """This file and tests/test_triton_precision.py, whose checks need triton to run too."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-k", "not test_rerun_under_the_interpreter", __file__,
                           os.path.join(here, "test_triton_precision.py")], env=env, cwd=here,
                          capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary, summary
