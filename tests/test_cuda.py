"""The CUDA backend on a GPU (issue 3): parity with the reference backend and with torch's own
optimizers (for-loop and fused) for every option and dtype, clipping and AMP inside the step,
GradScaler, found_inf, CUDA-graph capture with lr changes between replays, no host sync, launch
counts, and a float16 tensor of more than 2^31 elements; Lion, LARS and LAMB (issue 26) against
the reference backend, their two-stage steps reproducible bit for bit. Skipped as a whole without
a GPU."""
import math

import pytest
import torch

import fusedopt
from fusedopt import backends
from fusedopt._engine import MASTER
from fusedopt.algorithms import ALGORITHMS, optimizer_classes
from helpers import (CASES, CASE_IDS, FUSED, TORCH, compare_master_runs, compare_runs,
                     group_overrides, make_params, set_grads, split_groups, start_from_same_states)
from test_algorithms import NEW_CASES, NEW_IDS
from tolerances import LOW_PRECISION_FACTOR, assert_close, assert_within_ulp, max_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")

SHAPES = [(0,), (1,), (7,), (3, 5), (33, 17), (12, 10), (4, 1, 3), (70_000,)]  # last: 2 chunks
NONCONTIGUOUS = (5,)
STEPS = 12
INF = float("inf")


@pytest.fixture(autouse=True, scope="module")
def _cuda_backend_usable():
    # a visible GPU with an unusable backend is a failure, not a skip
    reason = backends.unavailable_reason("cuda")
    assert reason is None, f"a CUDA device is visible but backend='cuda' is not usable: {reason}"


def ext():
    return backends._module("cuda")._extension()


def on_cuda(params, dtype=None):
    """Copies on the GPU with the same strides (transposed views stay transposed)."""
    out = []
    for p in params:
        c = torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype, device="cuda")
        c.copy_(p.detach())
        out.append(torch.nn.Parameter(c))
    return out


def run(opts, sets, steps, none_every=4):
    for step in range(steps):
        set_grads(sets, step, none_every)
        for opt in opts:
            opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("algo,kwargs", CASES, ids=CASE_IDS)
def test_matches_reference_and_torch(dtype, algo, kwargs):
    base = make_params(SHAPES, dtype, NONCONTIGUOUS)
    overrides = group_overrides(algo, kwargs)
    ours, ref, loop, fused = (on_cuda(base) for _ in range(4))
    opt_ours = FUSED[algo](split_groups(ours, overrides), backend="cuda", **kwargs)
    opt_ref = FUSED[algo](split_groups(ref, overrides), backend="reference", **kwargs)
    opt_loop = TORCH[algo](split_groups(loop, overrides), foreach=False, **kwargs)
    opt_fused = TORCH[algo](split_groups(fused, overrides), fused=True, **kwargs)
    # torch's _fused_sgd raises (TypeError: expected Tensor ... got NoneType) when a param gets
    # its first grad after its group's first momentum step, which the None grads here do; its
    # twin then sees every grad on every step: test_sgd_momentum_matches_torch_fused
    late_grads_ok = not (algo == "SGD" and kwargs.get("momentum"))
    run([opt_ours, opt_ref, opt_loop] + [opt_fused] * late_grads_ok,
        [ours, ref, loop] + [fused] * late_grads_ok, STEPS)
    compare_runs(ours, ref, opt_ours, opt_ref, f"{STEPS} steps vs reference")
    compare_runs(ours, loop, opt_ours, opt_loop, f"{STEPS} steps vs torch for-loop")
    for i, (p, q) in enumerate(zip(ours, fused) if late_grads_ok else ()):
        assert_close(p.detach(), q.detach(), f"{STEPS} steps vs torch fused: param {i}")


@pytest.mark.parametrize("algo,kwargs", [c for c in CASES if c[0] == "SGD" and c[1].get("momentum")],
                         ids=[i for c, i in zip(CASES, CASE_IDS)
                              if c[0] == "SGD" and c[1].get("momentum")])
def test_sgd_momentum_matches_torch_fused(algo, kwargs):
    """Momentum SGD against torch's fused SGD, every grad present on every step (what its
    first-step rule needs; test_matches_reference_and_torch covers None grads)."""
    base = make_params(SHAPES, torch.float32, NONCONTIGUOUS)
    overrides = group_overrides(algo, kwargs)
    ours, fused = on_cuda(base), on_cuda(base)
    opt_ours = FUSED[algo](split_groups(ours, overrides), backend="cuda", **kwargs)
    opt_fused = TORCH[algo](split_groups(fused, overrides), fused=True, **kwargs)
    run([opt_ours, opt_fused], [ours, fused], STEPS, none_every=0)
    compare_runs(ours, fused, opt_ours, opt_fused, f"{STEPS} steps vs torch fused")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,kwargs", CASES, ids=CASE_IDS)
def test_low_precision_error_bound(dtype, algo, kwargs):
    """Error against an fp64 run <= LOW_PRECISION_FACTOR x torch fused's in the same dtype;
    states stay in the param dtype (torch's layout)."""
    master = make_params([(257,), (31, 9), (1000,), (70_000,)], torch.float64)
    oracle, low_torch, low_ours = on_cuda(master), on_cuda(master, dtype), on_cuda(master, dtype)
    opts = [TORCH[algo](oracle, foreach=False, **kwargs),
            TORCH[algo](low_torch, fused=True, **kwargs),
            FUSED[algo](low_ours, backend="cuda", **kwargs)]
    run(opts, [oracle, low_torch, low_ours], 15, none_every=0)
    err_ours, err_torch = max_error(low_ours, oracle), max_error(low_torch, oracle)
    assert err_ours <= LOW_PRECISION_FACTOR * err_torch, (
        f"{dtype}: fusedopt error {err_ours:.3g} > "
        f"{LOW_PRECISION_FACTOR} x torch fused {err_torch:.3g}")
    for p in low_ours:
        for key, value in opts[2].state[p].items():
            if torch.is_tensor(value) and key != "step":
                assert value.dtype == dtype, f"state[{key!r}] is {value.dtype}, param is {dtype}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("norm_type", [2.0, INF], ids=["l2", "inf"])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True)),
                                         ("Adam", dict(weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True))],
                         ids=["AdamW-amsgrad", "Adam-l2", "SGD-nesterov"])
def test_clip_inside_step_matches_torch(norm_type, algo, kwargs, dtype):
    """opt.clip_grad_norm_ + step (coefficient applied inside the update) == torch's
    clip_grad_norm_ + step, norm included, over 10 steps and 3 groups. No empty param: torch's
    inf-norm of an empty grad raises. fp64: the norm and the coefficient are float64, as
    torch's (Note [norm dtype], fusedopt/backends/__init__.py)."""
    base = make_params(SHAPES[1:], dtype, [i - 1 for i in NONCONTIGUOUS])
    overrides = group_overrides(algo, kwargs)
    ours, ref, theirs = on_cuda(base), on_cuda(base), on_cuda(base)
    opt_ours = FUSED[algo](split_groups(ours, overrides), backend="cuda", **kwargs)
    opt_ref = FUSED[algo](split_groups(ref, overrides), backend="reference", **kwargs)
    opt_theirs = TORCH[algo](split_groups(theirs, overrides), foreach=False, **kwargs)
    for step in range(10):
        set_grads([ours, ref, theirs], step)
        n_ours = opt_ours.clip_grad_norm_(0.5, norm_type)
        n_ref = opt_ref.clip_grad_norm_(0.5, norm_type)
        n_theirs = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type, foreach=False)
        assert n_ours.dtype == n_ref.dtype == n_theirs.dtype == dtype
        assert_close(n_ours, n_ref, f"step {step}: norm vs reference")
        assert_close(n_ours, n_theirs, f"step {step}: norm vs torch")
        for opt in (opt_ours, opt_ref, opt_theirs):
            opt.step()
    compare_runs(ours, ref, opt_ours, opt_ref, "clip + step vs reference")
    compare_runs(ours, theirs, opt_ours, opt_theirs, "clip + step vs torch")


def torch_norm(tensors, norm_type):
    """torch's clip_grad_norm_ total norm taken in fp64, in the dtype of fusedopt's norms (Note
    [norm dtype], fusedopt/backends/__init__.py): float64 if a tensor is fp64, else float32."""
    per_tensor = [torch.linalg.vector_norm(t.double(), norm_type) for t in tensors if t.numel()]
    fp64 = any(t.dtype == torch.float64 for t in tensors)
    return torch.linalg.vector_norm(torch.stack(per_tensor), norm_type).to(
        torch.float64 if fp64 else torch.float32)


def test_norms_mixed_dtypes_and_non_finite():
    cuda = backends._module("cuda")
    tensors = [torch.randn(70_000, device="cuda"), torch.randn(33, 17, device="cuda").t(),
               torch.randn(513, device="cuda", dtype=torch.float16),
               torch.randn(9, device="cuda", dtype=torch.bfloat16),
               torch.randn(1000, device="cuda", dtype=torch.float64), torch.empty(0, device="cuda")]
    for norm_type in (2.0, INF):
        assert_close(cuda.tensors_norm(tensors, norm_type), torch_norm(tensors, norm_type),
                     f"mixed-dtype {norm_type}-norm")
    for bad in (INF, float("nan")):
        poisoned = [t.clone() for t in tensors]
        poisoned[2][100] = bad
        for norm_type in (2.0, INF):
            expected = torch_norm(poisoned, norm_type)
            got = cuda.tensors_norm(poisoned, norm_type)
            assert torch.equal(got.isnan(), expected.isnan()) and not torch.isfinite(got), (
                f"{norm_type}-norm with {bad}: got {got.item()}, torch {expected.item()}")
    # the AMP form: norm of the unscaled grads, and found_inf set on device
    inv_scale = torch.full((), 1 / 1024, device="cuda")
    found_inf = torch.zeros((), device="cuda")
    scaled = [t * 1024 for t in tensors[:3]]
    got = ext().cuda_tensors_norm(scaled, 2.0, inv_scale, found_inf)
    assert_close(got, torch_norm(tensors[:3], 2.0), "unscaled norm")
    assert found_inf.item() == 0.0
    scaled[0][5] = INF
    ext().cuda_tensors_norm(scaled, 2.0, inv_scale, found_inf)
    assert found_inf.item() == 1.0


def test_scale_in_place_mixed_dtypes():
    tensors = [torch.randn(70_003, device="cuda"), torch.randn(12, 10, device="cuda").t(),
               torch.randn(100, device="cuda", dtype=torch.float16)[::2],        # a view with gaps
               torch.randn(64, device="cuda", dtype=torch.float64)]
    # the kernel's promise, in closed form: each element times the float32 factor in the
    # op-math type (fp32 for fp16/bf16/fp32, fp64 for fp64: double(0.3f)), rounded once to the
    # tensor's dtype; the update kernels apply a clip coefficient the same way. (torch's
    # _foreach_mul_ rounds the factor to fp16 first for fp16 tensors: 1 fp16 ulp apart, seen on
    # an H200 on 2026-11-27.)
    factor = torch.full((), 0.3, device="cuda")
    expected = [(t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                 * factor.double().to(torch.float64 if t.dtype == torch.float64
                                      else torch.float32)).to(t.dtype) for t in tensors]
    ext().cuda_tensors_scale_(tensors, factor)
    for i, (t, e) in enumerate(zip(tensors, expected)):
        torch.testing.assert_close(t, e, rtol=0, atol=0, msg=lambda m: f"tensor {i}: {m}")
    # a float64 factor (the clip coefficient of fp64 grads, Note [norm dtype]) is rounded to each
    # tensor's op-math type first, as torch's mul_ by a 0-d tensor does
    factor = torch.full((), 1 / 3, device="cuda", dtype=torch.float64)
    compute = [torch.float64 if t.dtype == torch.float64 else torch.float32 for t in tensors]
    expected = [(t.to(c) * factor.to(c)).to(t.dtype) for t, c in zip(tensors, compute)]
    ext().cuda_tensors_scale_(tensors, factor)
    for i, (t, e) in enumerate(zip(tensors, expected)):
        torch.testing.assert_close(t, e, rtol=0, atol=0, msg=lambda m: f"fp64 factor, {i}: {m}")


FOUND_INF_CASES = [("FusedAdamW", dict(amsgrad=True)), ("FusedSGD", dict(momentum=0.9))] + [
    (n, NEW_CASES[n][0][0]) for n in ("FusedLion", "FusedLARS", "FusedLAMB")]


@pytest.mark.parametrize("name, kwargs", FOUND_INF_CASES, ids=[n for n, _ in FOUND_INF_CASES])
def test_found_inf_touches_nothing_then_scaled_step_matches_reference(name, kwargs):
    """Params, states and step counters stay as they were under found_inf (both launches of
    LARS and LAMB skip); the next, scaled step matches the reference."""
    base = make_params(SHAPES, torch.float32, NONCONTIGUOUS)
    ours, ref = on_cuda(base), on_cuda(base)
    opt_ours = optimizer_classes()[name](ours, backend="cuda", **kwargs)
    opt_ref = optimizer_classes()[name](ref, backend="reference", **kwargs)
    run([opt_ours, opt_ref], [ours, ref], 3, none_every=0)
    before = [p.detach().clone() for p in ours]
    states = [{k: v.clone() for k, v in opt_ours.state[p].items()} for p in ours]
    counters = [[s.item() for s in b.spec.steps] for b in opt_ours._buckets]
    set_grads([ours, ref], 3, none_every=0)
    for opt in (opt_ours, opt_ref):
        opt.grad_scale = torch.full((), 8.0, device="cuda")
        opt.found_inf = torch.ones((), device="cuda")
        opt.step()
    for i, p in enumerate(ours):
        assert torch.equal(p.detach(), before[i]), f"param {i} changed under found_inf"
        for key, value in states[i].items():
            assert torch.equal(opt_ours.state[p][key], value), f"state[{key!r}] of {i} changed"
    assert [[s.item() for s in b.spec.steps] for b in opt_ours._buckets] == counters
    for opt in (opt_ours, opt_ref):
        opt.found_inf = torch.zeros((), device="cuda")
        opt.step()
    compare_runs(ours, ref, opt_ours, opt_ref, "after a skipped and a scaled step")


def test_grad_scaler_matches_torch():
    """GradScaler with fp16 autocast, an injected overflow on step 4: fusedopt (found_inf and the
    unscale inside the step) against torch's for-loop AdamW (unscale_, then step). Both step the
    same grads: one backward on our model, its scaled grads copied to torch's. Separate backward
    passes would differ after the first step, because fp16 autocast turns a 1-ulp difference of an
    fp32 param into a 1e-3 relative difference of its fp16 copy (seen on an H200, 2026-11-27)."""
    torch.manual_seed(0)
    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                   torch.nn.Linear(128, 8)).cuda()
    model_ours, model_theirs = mlp(), mlp()
    model_theirs.load_state_dict(model_ours.state_dict())
    opt_ours = fusedopt.FusedAdamW(model_ours.parameters(), lr=1e-2, backend="cuda")
    opt_theirs = torch.optim.AdamW(model_theirs.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0 ** 16, growth_interval=3)
               for _ in range(2)]
    for step in range(12):
        x = torch.randn(32, 64, device="cuda")
        for opt in (opt_ours, opt_theirs):
            opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model_ours(x).float().square().mean()
        scalers[0].scale(loss).backward()
        scalers[1].scale(torch.ones((), device="cuda"))      # creates its scale, like scale(loss)
        if step == 4:                                      # an overflow: the step must be skipped
            next(model_ours.parameters()).grad[0, 0] = INF
        for p, q in zip(model_ours.parameters(), model_theirs.parameters()):
            q.grad = p.grad.clone()
        for opt, scaler in ((opt_ours, scalers[0]), (opt_theirs, scalers[1])):
            scaler.step(opt)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale(), f"step {step}: scales differ"
    for (name, p), q in zip(model_ours.named_parameters(), model_theirs.parameters()):
        assert_close(p.detach(), q.detach(), f"GradScaler: {name}")
        assert opt_ours.state[p]["step"].item() == opt_theirs.state[q]["step"].item() == 11


def _fill_grads(params, step):
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad.copy_(torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("write", ["device", "numbers"])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True, weight_decay=0.1)),
                                         ("SGD", dict(momentum=0.9, nesterov=True)),
                                         ("LAMB", dict(weight_decay=0.1, trust_clip=True)),
                                         ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=1e-3))],
                         ids=["AdamW-amsgrad", "SGD-nesterov", "LAMB", "LARS"])
def test_graph_capture_of_clip_and_step_equals_eager(algo, kwargs, write):
    """clip_grad_norm_ + step captured once and replayed with new grads and a new lr written
    into the hyper-parameter table between replays == the same steps run eagerly. The lr is
    written on the device (a float64 tensor) or as numbers (the dicts and the table at once,
    in place: Note [one truth])."""
    base = make_params([(1000,), (33, 17), (5,), (70_000,)], torch.float32)
    graphed, eager = on_cuda(base), on_cuda(base)
    groups = [{"lr": 1e-2}, {"lr": 3e-3}]
    cls = optimizer_classes()[f"Fused{algo}"]    # LAMB, LARS: two launches, partials buffer
    opt_g = cls(split_groups(graphed, groups), backend="cuda", **kwargs)
    opt_e = cls(split_groups(eager, groups), backend="cuda", **kwargs)
    for p in graphed + eager:
        p.grad = torch.zeros_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                     # warm-up: creates state and buckets
        for params, opt in ((graphed, opt_g), (eager, opt_e)):
            _fill_grads(params, 0)
            opt.clip_grad_norm_(1.0)
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_g.clip_grad_norm_(1.0)
        opt_g.step()
    for step in range(1, 8):
        lrs = [1e-2 * 0.8 ** step, 3e-3 * 1.1 ** step]
        _fill_grads(graphed, step)
        # float64, as the table and the eager side's Python floats: a float32 tensor would
        # round each lr to float32 first
        opt_g.set_hparam("lr", torch.tensor(lrs, dtype=torch.float64, device="cuda")
                         if write == "device" else lrs)
        graph.replay()
        _fill_grads(eager, step)
        opt_e.set_hparam("lr", lrs)
        opt_e.clip_grad_norm_(1.0)
        opt_e.step()
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(graphed, eager)):
        assert torch.equal(p, q), f"param {i}: replay - eager = {(p - q).abs().max().item()}"
        for key, value in opt_e.state[q].items():
            if torch.is_tensor(value):
                assert torch.equal(opt_g.state[p][key], value), f"param {i} state[{key!r}]"


def test_add_param_group_after_a_captured_step_raises_once():
    """Note [one truth]: the graph keeps reading the old table and stepping the old grouping;
    the next eager step says so instead of silently running beside it."""
    params = on_cuda(make_params([(10,), (3, 4)], torch.float32))
    opt = fusedopt.FusedAdamW(params, backend="cuda")
    for p in params:
        p.grad = torch.ones_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    table = next(iter(opt.hparam_tables.values()))
    graph.replay()
    extra = torch.nn.Parameter(torch.zeros(5, device="cuda"))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    with pytest.raises(RuntimeError, match="captured in a CUDA graph"):
        opt.step()
    opt.step()                            # said once: the table grows, a new graph can follow
    assert next(iter(opt.hparam_tables.values())).shape[0] == 2 and table.shape[0] == 1


@pytest.mark.parametrize("algo", ["AdamW", "SGD"])
def test_compiled_step_equals_eager_on_cuda(algo):
    """Note [compiled steps] with the cuda backend (tests/test_compile.py runs the CPU ones)."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 1)).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.randn(8, 16, device="cuda"), torch.randn(8, 1, device="cuda")
    opts = [FUSED[algo](net.parameters(), backend="cuda",
                        **(dict(momentum=0.9) if algo == "SGD" else {})) for net in nets]

    def step(net, opt):
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.clip_grad_norm_(0.1)
        opt.step()
        opt.zero_grad()
    compiled = torch.compile(step, backend="aot_eager")
    for _ in range(4):
        compiled(nets[0], opts[0])
        step(nets[1], opts[1])
    for i, (p, q) in enumerate(zip(nets[0].parameters(), nets[1].parameters())):
        assert_close(p.detach(), q.detach(), f"compiled {algo}: param {i}")


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_with_inductor_on_cuda(mode):
    """The whole step compiled by inductor; reduce-overhead replays it from CUDA graphs
    (scripts/gpu/gpu_compile.py times it and lists inductor's reasons where it skips a graph)."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1)).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 1, device="cuda")
    opts = [FUSED["AdamW"](net.parameters(), lr=1e-3, backend="cuda") for net in nets]

    def step(net, opt):
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(step, mode=None if mode == "default" else mode)
    for _ in range(5):
        torch.compiler.cudagraph_mark_step_begin()
        compiled(nets[0], opts[0])
        step(nets[1], opts[1])
    for i, (p, q) in enumerate(zip(nets[0].parameters(), nets[1].parameters())):
        # inductor orders the forward's and backward's arithmetic its own way: grads differ by
        # rounding, as on CPU (tests/test_compile.py::test_the_issues_example_compiles_with_inductor)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6,
                                   msg=lambda msg: f"{mode}: param {i}: {msg}")
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(opts[0].state[p]["exp_avg_sq"], opts[1].state[q]["exp_avg_sq"],
                                   rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("name", list(optimizer_classes()))
def test_clip_and_step_never_sync(name):
    """Every class, LARS's and LAMB's per-tensor norms and LAMB's global clip included."""
    base = make_params(SHAPES, torch.float32, NONCONTIGUOUS)
    params = on_cuda(base)
    kwargs = {"FusedSGD": dict(momentum=0.9), "FusedLARS": dict(lr=0.1, momentum=0.9)}.get(name, {})
    opt = optimizer_classes()[name](split_groups(params, [{"lr": 1e-2}, {"lr": 1e-3}]),
                                    backend="cuda", **kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()                                        # first step: state creation may sync
    grads = [torch.randn_like(p) for p in params]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad.copy_(g)
            opt.clip_grad_norm_(1.0)
            opt.step()
            fusedopt.clip_grad_norm_(params, 1.0, norm_type=INF)
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_one_update_launch_for_many_groups():
    """465 groups (a detector's paramwise config): one norm launch + one finalize + one update."""
    params = on_cuda(make_params([(64,)] * 465, torch.float32))
    groups = [{"params": [p], "lr": 1e-3 * (1 + i % 7)} for i, p in enumerate(params)]
    opt = fusedopt.FusedAdamW(groups, backend="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        opt.clip_grad_norm_(1.0)
        opt.step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ours = [n for n in names if "fusedopt" in n]
    assert sum("multi_tensor_kernel" in n and "Adam" in n for n in ours) == 1, ours
    assert sum("multi_tensor_kernel" in n and "Norm" in n for n in ours) == 1, ours
    assert sum("finalize_norm" in n for n in ours) == 1, ours


def test_fp16_tensor_over_2_31_elements():
    n = 2 ** 31 + 4096 + 3                             # odd: the last chunk ends in a scalar tail
    needed = 4 * 2 * n + (1 << 30)                     # param, grad, exp_avg, exp_avg_sq + slack
    if torch.cuda.mem_get_info()[0] < needed:
        pytest.skip(f"needs {needed / 2 ** 30:.1f} GiB of free GPU memory")
    p = torch.nn.Parameter(torch.ones(n, dtype=torch.float16, device="cuda"))
    p.grad = torch.full((n,), 0.5, dtype=torch.float16, device="cuda")
    specials = torch.linspace(-2, 2, 64, dtype=torch.float16, device="cuda")
    windows = [slice(0, 64), slice(2 ** 31 - 32, 2 ** 31 + 32), slice(n - 64, n)]
    for w in windows:
        p.grad[w] = specials
    expected_norm = math.sqrt(0.25 * (n - 3 * 64) + 3 * specials.double().square().sum().item())
    opt = fusedopt.FusedAdam([p], lr=0.1, backend="cuda")
    norm = opt.clip_grad_norm_(1e9)                    # no clipping; checks the 64-bit reduction
    assert_close(norm, torch.tensor(expected_norm, dtype=torch.float32, device="cuda"), "norm")
    opt.step()
    opt.step()
    assert opt.state[p]["step"].item() == 2
    # elementwise update: each window must match the same two steps on a small copy of it
    for w in windows:
        small = torch.ones(64, dtype=torch.float64, device="cuda")
        oracle, low_torch = torch.nn.Parameter(small.clone()), torch.nn.Parameter(small.half())
        o1 = torch.optim.Adam([oracle], lr=0.1)
        o2 = torch.optim.Adam([low_torch], lr=0.1, fused=True)
        for _ in range(2):
            oracle.grad, low_torch.grad = specials.double(), specials.clone()
            o1.step()
            o2.step()
        err_ours = max_error([p.detach()[w]], [oracle])
        err_torch = max_error([low_torch], [oracle])
        assert err_ours <= LOW_PRECISION_FACTOR * err_torch, f"{w}: {err_ours} vs {err_torch}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("algo,kwargs", CASES, ids=CASE_IDS)
def test_master_weights_match_reference(dtype, algo, kwargs):
    """master_weights=True (Note [master copy]): every option, three groups, None grads, a
    transposed view, vs the reference backend (itself bitwise torch's math on the masters:
    tests/test_master_weights.py). Each step starts from our states (start_from_same_states), so
    every step's transition is held to fp32 rounding. Params overwritten with NaN before the
    last step show the kernel never reads them."""
    base = make_params(SHAPES, dtype, NONCONTIGUOUS)
    overrides = group_overrides(algo, kwargs)
    ours, ref = on_cuda(base), on_cuda(base)
    opt = FUSED[algo](split_groups(ours, overrides), backend="cuda", master_weights=True,
                      **kwargs)
    opt_ref = FUSED[algo](split_groups(ref, overrides), backend="reference",
                          master_weights=True, **kwargs)
    for step in range(STEPS):
        set_grads([ours, ref], step)
        if step == STEPS - 1:
            for p in ours:
                if "master_param" in opt.state.get(p, {}):
                    p.detach().fill_(float("nan"))
        start_from_same_states(ours, opt, ref, opt_ref)
        opt.step()
        opt_ref.step()
    stepped = [i for i, p in enumerate(ours) if p.grad is not None]
    compare_master_runs([ours[i] for i in stepped], opt, [ref[i] for i in stepped], opt_ref,
                        f"{algo} {dtype} masters vs reference")


def _tensor_states(opt, p):
    return {k: v for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)}


@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.float64, False),
                                           (torch.bfloat16, False), (torch.float16, False),
                                           (torch.bfloat16, True), (torch.float16, True)],
                         ids=["fp32", "fp64", "bf16", "fp16", "bf16-master", "fp16-master"])
@pytest.mark.parametrize("name, case", NEW_IDS, ids=[f"{n}-{i}" for n, i in NEW_IDS])
def test_new_algorithms_match_reference(name, case, dtype, master):
    """Lion, LARS and LAMB on the cuda backend against the reference backend on the same GPU
    (tests/test_algorithms.py holds the reference to mmpretrain's and lion-pytorch's steps):
    params and every state over 8 steps, three groups, None grads, shapes 0, 1, odd, 2-D, a
    transposed view and two chunks (70,000 elements), so the two-stage per-tensor sums span
    blocks. fp32/fp64 agree to the tolerance table (nvcc contracts multiply-adds that torch's
    separate ops round twice; LARS and LAMB sum their norms in another order than the
    reference); fp16/bf16 states and params, stepped from the same states each step, to one ulp
    of their dtype; each param with a master is its rounding."""
    kwargs, groups = NEW_CASES[name][case]
    kwargs = dict(kwargs, master_weights=master)
    base = make_params(SHAPES, dtype, NONCONTIGUOUS)
    ours, ref = on_cuda(base), on_cuda(base)
    cls = optimizer_classes()[name]
    opt = cls(split_groups(ours, groups), backend="cuda", **kwargs)
    opt_ref = cls(split_groups(ref, groups), backend="reference", **kwargs)
    low = dtype in (torch.float16, torch.bfloat16)
    for step in range(8):
        set_grads([ours, ref], step)
        if low:
            for p, q in zip(ours, ref):
                q.detach().copy_(p.detach())
            start_from_same_states(ours, opt, ref, opt_ref)
        opt.step()
        opt_ref.step()
        for i, (p, q) in enumerate(zip(ours, ref)):
            where = f"{name}-{case} step {step} param {i} {tuple(p.shape)}"
            s, t = _tensor_states(opt, p), _tensor_states(opt_ref, q)
            assert s.keys() == t.keys(), where
            if master and "master_param" in s:
                assert torch.equal(p.detach(), s["master_param"].to(dtype)), where
            for key, a, b in [("param", p.detach(), q.detach())] + [(k, s[k], t[k]) for k in t]:
                if low and a.dtype != torch.float32:
                    assert_within_ulp(a, b, f"{where} {key}")
                else:
                    assert_close(a, b, f"{where} {key}")


@pytest.mark.parametrize("name", ["FusedLARS", "FusedLAMB"])
def test_two_stage_steps_are_reproducible_bit_for_bit(name):
    """Note [two stages] (csrc/cuda/engine.cuh): the per-tensor sums are partials per block
    summed in a fixed order, never float atomics, so two runs of the same steps give the same
    bits; tensors of 1 to 40 chunks (2.6M elements), under clipping and an AMP scale."""
    kwargs, groups = NEW_CASES[name][0]
    base = make_params([(2_600_000,), (333, 517), (70_000,), (7,)], torch.float32)
    runs = []
    for _ in range(2):
        params = on_cuda(base)
        opt = optimizer_classes()[name](split_groups(params, groups), backend="cuda", **kwargs)
        for step in range(5):
            set_grads([params], step, none_every=0)
            opt.clip_grad_norm_(1.0)
            opt.grad_scale, opt.found_inf = (torch.full((), 2.0, device="cuda"),
                                              torch.zeros((), device="cuda"))
            opt.step()
        runs.append((params, opt))
    (a, opt_a), (b, opt_b) = runs
    for i, (p, q) in enumerate(zip(a, b)):
        assert torch.equal(p, q), f"param {i}: {(p - q).abs().max().item()}"
        for key, value in _tensor_states(opt_a, p).items():
            assert torch.equal(value, _tensor_states(opt_b, q)[key]), f"param {i} {key}"


@pytest.mark.parametrize("name, kernels", [("FusedLion", 1), ("FusedLARS", 2),
                                           ("FusedLAMB", 2)])
def test_update_launches_per_bucket(name, kernels):
    """One update launch per bucket, two for a two-stage algorithm (Note [two stages]), for
    100 tensors in 100 groups."""
    params = on_cuda(make_params([(64,)] * 100, torch.float32))
    opt = optimizer_classes()[name]([{"params": [p], "lr": 1e-3 * (1 + i % 7)}
                                     for i, p in enumerate(params)], backend="cuda",
                                    **NEW_CASES[name][0][0])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    math = name.replace("Fused", "").capitalize() + "Math"    # LionMath, LarsMath, LambMath
    assert sum("multi_tensor_kernel" in n and math in n for n in names) == kernels, names


# last: on the first GPU run (2026-11-27) building this Bucket crashed the process (its
# constructor threw, and C++ exceptions crashed that build); it admits the list now.
def test_fp32_master_copy_of_fp16_params():
    """With weights = MASTER the trailing float32 state list is an fp32 master copy (Note
    [master copy], csrc/bucket.h): the update runs on it and the fp16 param receives its
    rounding. Error vs fp64 must beat torch fused's plain fp16."""
    base = make_params([(257,), (1000,)], torch.float64)
    oracle, low_torch = on_cuda(base), on_cuda(base, torch.float16)
    low = on_cuda(base, torch.float16)
    master = [p.detach().float().clone() for p in low]
    states = [[torch.zeros_like(p) for p in low], [torch.zeros_like(p) for p in low], master]
    steps = [torch.zeros((), device="cuda") for _ in low]
    bucket = ext().Bucket(low, states, steps, [0, 0], [], [], MASTER, [])
    hp = torch.tensor([[1e-3, 0.01, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0]], dtype=torch.float64,
                      device="cuda")
    adamw = ALGORITHMS["adam"]
    opts = [torch.optim.AdamW(oracle, foreach=False), torch.optim.AdamW(low_torch, fused=True)]
    for step in range(15):
        set_grads([oracle, low_torch, low], step, none_every=0)
        for opt in opts:
            opt.step()
        ext().cuda_step(bucket, hp, adamw.id, adamw.flags_word({"decoupled": True}))
    assert max_error(low, oracle) <= max_error(low_torch, oracle)
    for p, m in zip(low, master):
        assert torch.equal(p.detach(), m.half()), "param is not the rounding of its master copy"
