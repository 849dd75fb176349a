"""Non-finite grads never corrupt silently; resume is exact (issue #8)."""
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fusedopt
from helpers import CPU_BACKENDS, FUSED, TORCH, clone_params, make_params, set_grads, split_groups
from tolerances import assert_close

SHAPES = [(6, 4), (9,), (1,), (3, 3, 2)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", {}), ("SGD", dict(lr=0.1, momentum=0.9))])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_nonfinite_skips_the_whole_step_on_device(backend, algo, kwargs, bad):
    params = make_params(SHAPES)
    reference_params = clone_params(params)
    opt = FUSED[algo](params, backend=backend, skip_nonfinite=True, **kwargs)
    reference = TORCH[algo](reference_params, foreach=False, **kwargs)
    for step in range(6):
        set_grads([params, reference_params], step, none_every=0)
        if step in (2, 4):
            params[step % len(params)].grad.view(-1)[0] = bad    # one element of one grad
            before = [p.detach().clone() for p in params]
            state_before = {k: v.clone() for s in opt.state.values() for k, v in s.items()}
        opt.step()
        if step in (2, 4):
            assert all(torch.equal(p.detach(), b) for p, b in zip(params, before)), "params changed"
            after = {k: v for s in opt.state.values() for k, v in s.items()}
            assert all(torch.equal(after[k], v) for k, v in state_before.items()), "state changed"
        else:
            reference.step()
    assert opt.skipped_steps.item() == 2
    for i, (p, q) in enumerate(zip(params, reference_params)):
        assert_close(p.detach(), q.detach(), f"param {i} vs torch run without the bad steps")
    saved = opt.state_dict()
    fresh = FUSED[algo](clone_params(params), backend=backend, skip_nonfinite=True, **kwargs)
    fresh.load_state_dict(saved)
    assert fresh.skipped_steps.item() == 2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_without_skip_nonfinite_nan_propagates_like_torch(backend):
    params = make_params([(4,)])
    theirs = clone_params(params)
    ours = fusedopt.FusedAdam(params, backend=backend)
    torch_opt = torch.optim.Adam(theirs, foreach=False)
    for ps in (params, theirs):
        ps[0].grad = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    ours.step(), torch_opt.step()
    torch.testing.assert_close(params[0].detach(), theirs[0].detach(), equal_nan=True)
    assert torch.isnan(params[0][1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True)),
                                         ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))])
def test_resume_is_bitwise_identical(backend, algo, kwargs):
    """Save at step 5 (through torch.save), load into a fresh model, optimizer and scheduler,
    continue: every parameter and state tensor equals the uninterrupted run bit for bit."""
    params = make_params(SHAPES)
    groups = [{}, {"lr": 0.01}]
    factory = lambda ps: FUSED[algo](split_groups(ps, groups), backend=backend, **kwargs)  # noqa
    sched_factory = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)  # noqa
    straight = clone_params(params)
    opt_a = factory(straight)
    sched_a = sched_factory(opt_a)
    first = clone_params(params)
    opt_b = factory(first)
    sched_b = sched_factory(opt_b)
    for step in range(12):
        for opt, sched, ps in ((opt_a, sched_a, straight), (opt_b, sched_b, first)):
            if step >= 5 and opt is opt_b:
                continue
            set_grads([ps], step)
            fusedopt.clip_grad_norm_(ps, 1.0)
            opt.step()
            sched.step()
        if step == 4:
            buffer = io.BytesIO()
            torch.save({"params": [p.detach() for p in first], "opt": opt_b.state_dict(),
                        "sched": sched_b.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt_c = factory(resumed)
    opt_c.load_state_dict(ckpt["opt"])
    sched_c = sched_factory(opt_c)
    sched_c.load_state_dict(ckpt["sched"])
    for step in range(5, 12):
        set_grads([resumed], step)
        fusedopt.clip_grad_norm_(resumed, 1.0)
        opt_c.step()
        sched_c.step()
    for i, (p, q) in enumerate(zip(resumed, straight)):
        assert torch.equal(p.detach(), q.detach()), f"param {i} differs after resume"
        for key, value in opt_a.state[q].items():
            assert torch.equal(opt_c.state[p][key], value), f"param {i} state[{key}] differs"


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the reference and cpu backends")
def test_state_saved_with_one_backend_loads_with_another():
    params = make_params(SHAPES)
    ours, theirs = clone_params(params), clone_params(params)
    a = fusedopt.FusedAdamW(ours, backend="reference")
    t = torch.optim.AdamW(theirs, foreach=False)
    for step in range(4):
        set_grads([ours, theirs], step)
        a.step(), t.step()
    b = fusedopt.FusedAdamW(ours, backend="cpu")
    b.load_state_dict(a.state_dict())
    for step in range(4, 9):
        set_grads([ours, theirs], step)
        b.step(), t.step()
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p.detach(), q.detach(), f"param {i}")
        assert_close(b.state[p]["exp_avg"], t.state[q]["exp_avg"], f"param {i} exp_avg")


class _Allocations(TorchDispatchMode):
    """Records the element count of every tensor an op creates (outputs with new storage)."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        self.numels += [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)
                        and t.untyped_storage().data_ptr() not in inputs]
        return out


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"] or
                         [pytest.param("cpu", marks=pytest.mark.skip("the cpu backend is not built"))])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True)), ("SGD", dict(momentum=0.9))])
def test_no_parameter_sized_buffers_beyond_state(backend, algo, kwargs):
    """After the first step created the state, clip + step allocate nothing parameter-sized."""
    params = make_params([(4096,), (64, 33), (999,)])
    opt = FUSED[algo](params, backend=backend, **kwargs)
    set_grads([params], 0, none_every=0)
    opt.step()
    set_grads([params], 1, none_every=0)
    with _Allocations() as allocations:
        opt.clip_grad_norm_(1.0)
        opt.step()
    assert max(allocations.numels, default=0) < 999, allocations.numels
