"""master_weights=True (issue 16): fp32 master copies of fp16/bf16 params in
state['master_param'], stepped in place of the params, on every CPU backend (triton:
tests/test_triton.py, cuda: tests/test_cuda.py).

The oracle is torch's for-loop optimizer over fp32 copies of the params, with fp32 states (issue
25: masters mean fp32 states, what apex and Transformer Engine keep): that is the master-weights
algorithm written with torch's own ops. Other state dtypes: tests/test_precision.py."""
import io

import pytest
import torch

import fusedopt
from helpers import (CASES, CASE_IDS, CPU_BACKENDS, FUSED, TORCH, clone_params, group_overrides,
                     make_params, set_grads, split_groups)
from tolerances import assert_close

LOW = [torch.bfloat16, torch.float16]
LOW_IDS = ["bf16", "fp16"]
SHAPES = [(0,), (1,), (7,), (3, 5), (33, 17), (70_001,), (12, 10)]   # last: a transposed view
NONCONTIGUOUS = (6,)
STEPS = 8


class Oracle:
    """torch.optim's for-loop ``algo`` over fp32 twins of ``low`` params: the master-weights
    step in torch's ops."""

    def __init__(self, algo, kwargs, low, overrides):
        self.masters = clone_params(low, torch.float32)
        self.opt = TORCH[algo](split_groups(self.masters, overrides), foreach=False, **kwargs)

    def step(self, low):
        for m, p in zip(self.masters, low):
            m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()


def check_against(oracle, ours, opt, where, exact):
    """Masters vs the oracle's fp32 params, each param == its master's rounding, fp32 states vs
    the oracle's: bitwise if ``exact``, else to fp32 rounding."""
    for i, (p, m) in enumerate(zip(ours, oracle.masters)):
        state = opt.state.get(p, {})
        if "master_param" not in state:          # never had a grad: untouched, as the oracle
            assert torch.equal(p.detach().float(), m.detach()), f"{where}: param {i}"
            continue
        master = state["master_param"]
        assert master.dtype == torch.float32 and master.shape == p.shape
        assert torch.equal(p.detach(), master.to(p.dtype)), f"{where}: param {i} != rounded master"
        pairs = [("master_param", master, m.detach())]
        pairs += [(k, state[k], v) for k, v in oracle.opt.state[m].items()]
        for key, mine, want in pairs:
            what = f"{where}: param {i} state[{key!r}]"
            if key == "step":
                assert mine.item() == want.item(), what
            else:
                assert mine.dtype == torch.float32, f"{what} is {mine.dtype}"
            if exact:
                assert torch.equal(mine.float(), want.float()), what
            elif key != "step":
                assert_close(mine, want, what)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("algo,kwargs", CASES, ids=CASE_IDS)
def test_matches_torch_on_fp32_masters(backend, dtype, algo, kwargs):
    """Every option, three groups, None grads (also on the first step): the reference backend is
    bitwise torch's math on the masters; the cpu backend agrees to fp32 rounding."""
    low = make_params(SHAPES, dtype, NONCONTIGUOUS)
    overrides = group_overrides(algo, kwargs)
    oracle = Oracle(algo, kwargs, low, overrides)
    opt = FUSED[algo](split_groups(low, overrides), backend=backend, master_weights=True,
                      **kwargs)
    for step in range(STEPS):
        set_grads([low], step)
        oracle.step(low)
        opt.step()
    check_against(oracle, low, opt, f"{backend} {dtype} after {STEPS} steps",
                  exact=backend == "reference")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", {}), ("SGD", dict(momentum=0.9)),
                                         ("SGD", {})], ids=["AdamW", "SGD-momentum", "SGD"])
def test_param_is_written_never_read(backend, algo, kwargs):
    """The step starts from the master: a param overwritten in place (here with NaN) does not
    reach the update, and receives the master's rounding again."""
    low = make_params([(300,), (4, 5)], torch.bfloat16)
    twin = clone_params(low)
    opts = [FUSED[algo](ps, backend=backend, master_weights=True, **kwargs) for ps in (low, twin)]
    for step in range(3):
        set_grads([low, twin], step, none_every=0)
        if step == 2:
            for p in low:
                p.detach().fill_(float("nan"))
        for opt in opts:
            opt.step()
    for p, q in zip(low, twin):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opts[0].state[p]["master_param"], opts[1].state[q]["master_param"])


def _roundtrip(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True)),
                                         ("SGD", dict(lr=0.05, momentum=0.9)),
                                         ("SGD", dict(lr=0.05))],
                         ids=["AdamW-amsgrad", "SGD-momentum", "SGD"])
def test_save_load_continue_is_bitwise(backend, algo, kwargs):
    """state_dict carries the fp32 masters; save, load into a fresh optimizer over freshly
    loaded params, continue: bitwise the uninterrupted run (params, masters, states)."""
    base = make_params([(257,), (31, 9)], torch.bfloat16) + make_params([(40,)])   # + an fp32
    overrides = [{}, {"lr": 0.01}]
    straight, first = clone_params(base), clone_params(base)
    opt_straight = FUSED[algo](split_groups(straight, overrides), backend=backend,
                               master_weights=True, **kwargs)
    opt_first = FUSED[algo](split_groups(first, overrides), backend=backend, master_weights=True,
                            **kwargs)
    for step in range(4):
        set_grads([straight, first], step)
        opt_straight.step()
        opt_first.step()
    saved = _roundtrip({"model": [p.detach() for p in first], "optim": opt_first.state_dict()})
    masters = [s["master_param"] for s in saved["optim"]["state"].values() if "master_param" in s]
    assert masters and all(m.dtype == torch.float32 for m in masters)
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["model"]]
    opt_resumed = FUSED[algo](split_groups(resumed, overrides), backend=backend,
                              master_weights=True, **kwargs)
    opt_resumed.load_state_dict(saved["optim"])
    for step in range(4, 9):
        set_grads([straight, resumed], step)
        opt_straight.step()
        opt_resumed.step()
    for p, q in zip(straight, resumed):
        assert torch.equal(p.detach(), q.detach())
        s, t = opt_straight.state.get(p, {}), opt_resumed.state.get(q, {})
        assert set(s) == set(t)
        for key in s:
            assert s[key].dtype == t[key].dtype and torch.equal(s[key], t[key]), key


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_state_dict_gets_masters_from_the_params(backend):
    """torch.optim keeps no master: loading its state_dict makes one from each param, and the
    next step is the oracle's from there. The other way, torch loads fusedopt's state_dict."""
    low = make_params([(300,), (5, 7)], torch.bfloat16)
    theirs = clone_params(low)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    for step in range(3):
        set_grads([theirs], step, none_every=0)
        torch_opt.step()
    ours = clone_params(theirs)
    opt = fusedopt.FusedAdamW(ours, lr=0.01, backend=backend, master_weights=True)
    # as from a file: load_state_dict shares tensors it need not cast (step), as torch's does
    opt.load_state_dict(_roundtrip(torch_opt.state_dict()))
    oracle = Oracle("AdamW", dict(lr=0.01), ours, [{}])
    oracle.opt.load_state_dict(_roundtrip(torch_opt.state_dict()))   # fp32 twins: cast to fp32
    for step in range(3, 6):
        set_grads([ours], step, none_every=0)
        oracle.step(ours)
        opt.step()
    check_against(oracle, ours, opt, f"{backend} after loading torch's state_dict",
                  exact=backend == "reference")
    back = clone_params(ours)
    torch.optim.AdamW(back, lr=0.01).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("Adam", dict(weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))])
def test_fp32_params_are_unaffected(backend, algo, kwargs):
    """master_weights is a no-op for fp32 (and fp64) params, alone or beside bf16 params: the
    same bits as without it, and no master_param in their state."""
    base = make_params([(257,), (31, 9)]) + make_params([(65,)], torch.float64)
    low = make_params([(100,)], torch.bfloat16)
    with_masters, without = clone_params(base) + low, clone_params(base)
    opts = [FUSED[algo](with_masters, backend=backend, master_weights=True, **kwargs),
            FUSED[algo](without, backend=backend, **kwargs)]
    for step in range(5):
        set_grads([with_masters[:3], without], step)
        low[0].grad = torch.randn(100).bfloat16()
        for opt in opts:
            opt.step()
    for p, q in zip(with_masters, without):
        assert torch.equal(p.detach(), q.detach())
        assert "master_param" not in opts[0].state.get(p, {})
    assert opts[0].state[low[0]]["master_param"].dtype == torch.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", {}), ("SGD", dict(momentum=0.9)), ("SGD", {})],
                         ids=["AdamW", "SGD-momentum", "SGD"])
def test_bf16_with_masters_stays_close_to_fp32(backend, algo, kwargs):
    """The reason for masters: lr 3e-4, 200 steps, 4096 params ~N(0, 1), the same bf16-exact
    grads for all three runs. Measured (reference and cpu alike), mean |param - fp32 run rounded
    to bf16|: AdamW 3.0e-3 without masters, 1.4e-5 with (214x closer); momentum SGD 2.2e-2 vs
    1.1e-4 (199x); plain SGD 2.9e-3 vs 0 (exact). Without masters an update smaller than half a
    bf16 ulp of the weight is lost; with them the bf16 weights are the fp32 run's rounding
    except where bf16 m/v (torch's layout) move the master by a few fp32 ulps."""
    torch.manual_seed(0)
    start = torch.randn(4096).bfloat16()
    runs = [torch.nn.Parameter(start.to(d, copy=True)) for d in (torch.float32, torch.bfloat16,
                                                      torch.bfloat16)]
    opts = [FUSED[algo]([p], lr=3e-4, backend=backend, master_weights=m, **kwargs)
            for p, m in zip(runs, (False, False, True))]
    for _ in range(200):
        g = torch.randn(4096).bfloat16()
        for p, opt in zip(runs, opts):
            p.grad = g.to(p.dtype)
            opt.step()
    fp32 = runs[0].detach().double()
    target = fp32.bfloat16().double()
    without, with_masters = ((p.detach().double() - target).abs().mean().item() for p in runs[1:])
    assert without > 1e-3, f"bf16 without masters drifted only {without:.3g}: test too weak"
    assert with_masters <= without / 100, (
        f"with masters {with_masters:.3g} vs without {without:.3g}: not 100x closer")
    master = opts[2].state[runs[2]]["master_param"].double()
    assert (master - fp32).abs().mean().item() <= without / 100


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_with_clipping_and_skip_nonfinite(backend):
    """Deferred clipping scales the grads the master step reads (oracle: torch's
    clip_grad_norm_ on the fp32 twins); with skip_nonfinite a step with an inf grad leaves
    params, masters and states exactly as they were."""
    low = make_params([(300,), (31, 9)], torch.bfloat16)
    oracle = Oracle("AdamW", {}, low, [{}])
    opt = fusedopt.FusedAdamW(low, backend=backend, master_weights=True, skip_nonfinite=True)
    set_grads([low], 0, none_every=0)
    oracle.step(low)
    opt.step()        # packed: the clips below defer into the step (Note [clip inside the step])
    for step in range(1, 5):
        set_grads([low], step, none_every=0)
        for m, p in zip(oracle.masters, low):
            m.grad = p.grad.float()
        norm = fusedopt.clip_grad_norm_(low, 0.5)
        want = torch.nn.utils.clip_grad_norm_(oracle.masters, 0.5, foreach=False)
        assert_close(norm, want, f"step {step} norm")
        oracle.opt.step()
        opt.step()
    check_against(oracle, low, opt, f"{backend} clipped", exact=False)
    before = {k: v.clone() for k, v in opt.state[low[0]].items()}
    params_before = [p.detach().clone() for p in low]
    set_grads([low], 9, none_every=0)
    low[1].grad[0, 0] = float("inf")
    opt.step()
    assert opt.skipped_steps.item() == 1
    assert all(torch.equal(p.detach(), b) for p, b in zip(low, params_before))
    assert all(torch.equal(opt.state[low[0]][k], v) for k, v in before.items())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_with_grad_scaler(backend):
    """fp16 params with torch's GradScaler: the step unscales inside (the scale is a power of 2,
    so exactly) and equals a run on unscaled grads, bitwise; an inf grad skips the step and
    leaves the masters untouched."""
    low = make_params([(300,), (31, 9)], torch.float16)
    twin = clone_params(low)
    opt = fusedopt.FusedAdamW(low, backend=backend, master_weights=True)
    opt_twin = fusedopt.FusedAdamW(twin, backend=backend, master_weights=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for step in range(4):
        set_grads([twin], step, none_every=0)
        scale = scaler.scale(torch.ones(())).item()     # as scaling a loss would
        for p, q in zip(low, twin):
            p.grad = (q.grad.float() * scale).half()
        scaler.step(opt)
        scaler.update()
        opt_twin.step()
    for p, q in zip(low, twin):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt.state[p]["master_param"], opt_twin.state[q]["master_param"])
    masters = [opt.state[p]["master_param"].clone() for p in low]
    low[0].grad[3] = float("inf")
    scaler.scale(torch.ones(()))
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(opt.state[p]["master_param"], m) for p, m in zip(low, masters))


def test_config_layer_builds_it():
    """optimizer=dict(type='FusedAdamW', master_weights=True) through build_optim_wrapper."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)).to(torch.bfloat16)
    wrapper = fusedopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="FusedAdamW", lr=1e-2, weight_decay=0.05, master_weights=True),
        paramwise_cfg=dict(norm_decay_mult=0.0), clip_grad=dict(max_norm=1.0)))
    loss = model(torch.randn(3, 6, dtype=torch.bfloat16)).float().square().mean()
    wrapper.update_params(loss)
    opt = wrapper.optimizer
    assert all(g["master_weights"] for g in opt.param_groups)
    for p in model.parameters():
        assert torch.equal(p.detach(), opt.state[p]["master_param"].bfloat16())


def test_masters_follow_the_group_option():
    """master_weights is a group option like amsgrad: one group with, one without; switching
    it off drops the copy, switching it on makes one from the param."""
    a, b = make_params([(50,), (60,)], torch.bfloat16)
    opt = fusedopt.FusedSGD([{"params": [a], "master_weights": True}, {"params": [b]}], lr=0.1,
                            momentum=0.9)
    a.grad, b.grad = torch.ones(50).bfloat16(), torch.ones(60).bfloat16()
    opt.step()
    assert "master_param" in opt.state[a] and "master_param" not in opt.state[b]
    opt.param_groups[0]["master_weights"] = False
    opt.param_groups[1]["master_weights"] = True
    opt.step()
    assert "master_param" not in opt.state[a]
    assert torch.equal(opt.state[b]["master_param"].bfloat16(), b.detach())
