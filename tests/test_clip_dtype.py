"""The dtype of clipping (issue #26 item 4, Note [norm dtype] in fusedopt/backends/__init__.py):
the norm of fp64 grads is accumulated and returned in float64 and clips them by a float64
coefficient, as torch.nn.utils.clip_grad_norm_ does; grads of several dtypes clip as torch's rules
say (a float64 total and coefficient, rounded to each grad's compute type); fp32 clipping stays a
float32 norm and coefficient, bit for bit what it was. On every CPU backend: reference, cpu, and
triton where its interpreter runs (TRITON_INTERPRET=1)."""
import pytest
import torch

import fusedopt
from fusedopt import backends
from helpers import CPU_BACKENDS, clone_params, make_params, set_grads
from tolerances import assert_close

TRITON = (["triton"] if "triton" in fusedopt.available_backends()
          and backends.named("triton").supports(torch.device("cpu")) else [])
BACKENDS = CPU_BACKENDS + TRITON
SHAPES = [(4, 3), (7,), (1,), (600,), (5, 2)]     # (600,) spans two fp64 Triton blocks
HOW = ["fusedopt.clip_grad_norm_", "opt.clip_grad_norm_", "a subset (eager)"]


def clip(how, opt, params, max_norm, norm_type):
    if how == "opt.clip_grad_norm_":
        return opt.clip_grad_norm_(max_norm, norm_type)
    if how == "a subset (eager)":     # not exactly the optimizer's params: scaled in place
        return fusedopt.clip_grad_norm_(params[:3], max_norm, norm_type)
    return fusedopt.clip_grad_norm_(params, max_norm, norm_type)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=["l2", "inf"])
@pytest.mark.parametrize("how", HOW)
def test_fp64_grads_clip_with_torchs_float64_norm(backend, norm_type, how):
    """torch's norm and steps. The inf-norm is exact everywhere (a max), and so is the
    reference backend's 2-norm (torch's ops: per-tensor norms, then their norm); the cpu and
    triton kernels (and the eager clip of a subset, which the cpu backend reduces) sum the
    squares in one multi-tensor reduction, another order: fp64 rounding (2e-16 relative here),
    held to the fp64 tolerance of tests/tolerances.py (rtol 1e-12). A float32 norm misses
    torch's by ~2e-8 relative (556.0756225585938 against 556.0756112110349)."""
    params = make_params(SHAPES, torch.float64, noncontiguous=(4,))
    ours, theirs = clone_params(params), clone_params(params)
    opt = fusedopt.FusedAdamW(ours, lr=0.1, backend=backend)
    ref = torch.optim.AdamW(theirs, lr=0.1, foreach=False)
    for step in range(3):
        set_grads([ours, theirs], step, none_every=0)
        got = clip(how, opt, ours, 0.5, norm_type)
        want = torch.nn.utils.clip_grad_norm_(theirs[:3] if how == HOW[2] else theirs, 0.5,
                                              norm_type)
        assert got.dtype == want.dtype == torch.float64, got.dtype
        if norm_type == float("inf") or (backend == "reference" and how != HOW[2]):
            assert torch.equal(got, want), f"step {step}: {got.item()!r} != {want.item()!r}"
        else:
            assert_close(got, want, f"step {step} norm")
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            assert_close(p.detach(), q.detach(), f"step {step} param {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("owned", [True, False], ids=["fused-into-step", "eager"])
def test_mixed_fp32_fp64_follow_torchs_dtype_rules(backend, owned):
    """torch: each grad's norm in its dtype, the total in the promoted one (float64), the
    coefficient max_norm / (total + 1e-6) in float64, and mul_ rounds it to float32 for an fp32
    grad. fusedopt's total agrees with torch's to fp32 rounding only (torch rounds each fp32
    grad's norm to float32, fusedopt the fp32 bucket's), so the check is the rule: SGD with lr 1
    from zero params gives p = -grad * coef exactly, coef formed from the returned total and
    rounded to float32 for the fp32 grads only."""
    shapes = [(4, 3), (7,), (600,), (5, 2)]
    params = ([torch.nn.Parameter(torch.zeros(s)) for s in shapes[:2]]
              + [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes[2:]])
    twins = clone_params(params)
    opt = fusedopt.FusedSGD(params, lr=1.0, backend=backend)
    set_grads([params, twins], 0, none_every=0)
    grads = [p.grad.clone() for p in params]
    total = fusedopt.clip_grad_norm_(params if owned else params[1:], 0.5)
    torch_total = torch.nn.utils.clip_grad_norm_(twins if owned else twins[1:], 0.5)
    assert total.dtype == torch_total.dtype == torch.float64
    assert opt.grad_norm().dtype == torch.float64
    assert_close(total.float(), torch_total.float(), "total norm (fp32 tolerance)")
    coef = torch.clamp(0.5 / (total + 1e-6), max=1.0)
    assert coef.dtype == torch.float64 and coef < 1          # it clips
    opt.step()
    for i, (p, g) in enumerate(zip(params, grads)):
        if not owned and i == 0:
            assert torch.equal(p.detach(), -g), "param 0 is outside the clip"
            continue
        factor = coef if g.dtype == torch.float64 else coef.float()
        assert torch.equal(p.detach(), -(g * factor)), f"param {i} ({g.dtype})"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_clip_keeps_its_float32_norm_and_coefficient(backend):
    """fp32 grads: a float32 norm, and the deferred clip is the step of grads scaled in place by
    the float32 coefficient formed from it, bit for bit (params and states): what the fp32 path
    did before fp64 norms existed."""
    params = make_params(SHAPES, noncontiguous=(4,))
    a, b = clone_params(params), clone_params(params)
    fused = fusedopt.FusedAdamW(a, lr=0.1, backend=backend)
    plain = fusedopt.FusedAdamW(b, lr=0.1, backend=backend)
    for step in range(3):
        set_grads([a, b], step, none_every=0)
        total = fused.clip_grad_norm_(0.5)
        again = plain.grad_norm()
        assert total.dtype == again.dtype == torch.float32 and torch.equal(total, again)
        coef = torch.clamp(0.5 / (again + 1e-6), max=1.0)
        assert coef.dtype == torch.float32 and coef < 1
        torch._foreach_mul_([p.grad for p in b], coef)
        fused.step()
        plain.step()
        for i, (p, q) in enumerate(zip(a, b)):
            assert torch.equal(p.detach(), q.detach()), f"step {step} param {i}"
            for key, value in fused.state[p].items():
                assert torch.equal(value, plain.state[q][key]), f"step {step} {key} {i}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_grads_keep_a_float32_norm(backend, dtype):
    """fp16/bf16 grads: a float32 norm, accumulated in fp32 or wider (torch returns it in their
    dtype); beside fp64 grads, the total is float64."""
    params = make_params(SHAPES, dtype)
    opt = fusedopt.FusedAdamW(params, lr=0.1, backend=backend)
    set_grads([params], 0, none_every=0)
    got = opt.grad_norm()
    want = torch.linalg.vector_norm(torch.cat([p.grad.double().reshape(-1) for p in params]))
    assert got.dtype == torch.float32
    assert_close(got, want.float(), "norm")
    wide = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    wide.grad = torch.randn(3, dtype=torch.float64)
    assert fusedopt.clip_grad_norm_(params + [wide], 1e9).dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_skip_nonfinite_and_grad_scaler(backend):
    """skip_nonfinite reads the float64 norm; a GradScaler's inv_scale stays float32 (torch's
    unscale_ forms it so) and unscales fp64 grads exactly (a power of two)."""
    params = make_params(SHAPES, torch.float64)
    ours, theirs = clone_params(params), clone_params(params)
    opt = fusedopt.FusedAdamW(ours, lr=0.1, backend=backend, skip_nonfinite=True)
    ref = torch.optim.AdamW(theirs, lr=0.1, foreach=False)
    scale = torch.tensor(1024.0)
    for step in range(3):
        set_grads([ours, theirs], step, none_every=0)
        for p in ours:
            p.grad.mul_(1024.0)
        got = opt.clip_grad_norm_(0.5, grad_scale=scale)
        opt.grad_scale, opt.found_inf = scale, torch.zeros(())
        opt.step()
        want = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        ref.step()
        assert got.dtype == torch.float64
        assert_close(got, want, f"step {step} unscaled norm")
        for i, (p, q) in enumerate(zip(ours, theirs)):
            assert_close(p.detach(), q.detach(), f"step {step} param {i}")
    before = [p.detach().clone() for p in ours]
    set_grads([ours], 3, none_every=0)
    ours[1].grad[0] = float("inf")
    opt.step()
    assert opt.skipped_steps.item() == 1
    assert all(torch.equal(p.detach(), q) for p, q in zip(ours, before))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_global_clip_of_fp64_grads_is_float64(backend):
    """FusedLAMB's max_grad_norm clip forms its coefficient in the grads' dtype, as timm's Lamb
    (global norm of per-tensor norms, in the grads' dtype): an fp64 run clipped by it matches
    the reference backend to fp64 rounding (tests/test_algorithms.py checks the reference
    against a plain loop of timm's step)."""
    params = make_params(SHAPES, torch.float64)
    ours, theirs = clone_params(params), clone_params(params)
    opt = fusedopt.FusedLAMB(ours, lr=1e-2, max_grad_norm=0.5, backend=backend)
    ref = fusedopt.FusedLAMB(theirs, lr=1e-2, max_grad_norm=0.5, backend="reference")
    for step in range(3):
        set_grads([ours, theirs], step, none_every=0)
        coef = opt._grad_coefficient(opt._current_buckets(), None, None)
        assert coef.dtype == torch.float64 and coef < 1
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            assert_close(p.detach(), q.detach(), f"step {step} param {i}")


def test_compiled_fp64_clip_is_float64():
    """torch.compile: the norm op's fake implementation gives the float64 the op returns, and a
    compiled clip + step of an fp64 model equals the eager one."""
    def run(compiled):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 1)).double()
        o = fusedopt.FusedAdamW(m.parameters(), lr=1e-2, backend=CPU_BACKENDS[-1])
        x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

        def step():
            m(x).square().sum().backward()
            norm = o.clip_grad_norm_(0.1)
            o.step()
            o.zero_grad()
            return norm
        fn = torch.compile(step, backend="aot_eager") if compiled else step
        norms = [fn() for _ in range(3)]
        return norms, list(m.parameters())
    torch._dynamo.reset()
    try:
        (n1, p1), (n2, p2) = run(True), run(False)
    finally:
        torch._dynamo.reset()
    for a, b in zip(n1, n2):
        assert a.dtype == b.dtype == torch.float64
        assert_close(a, b, "norm")
    for i, (p, q) in enumerate(zip(p1, p2)):
        assert_close(p.detach(), q.detach(), f"param {i}")
    from fusedopt import _library
    grads = [torch.randn(3, dtype=torch.float64), torch.randn(4)]
    torch.library.opcheck(_library.norm, (grads, 2.0, CPU_BACKENDS[-1]))
    assert _library.norm(grads, 2.0, CPU_BACKENDS[-1]).dtype == torch.float64
