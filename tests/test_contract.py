"""Drop-in contract with torch.optim: state_dict interchange, schedulers, hooks, closures,
add_param_group, clipping, GradScaler, and O(1) Python work per step (issue #2)."""
import copy
import pickle
import sys

import pytest
import torch

import fusedopt
from helpers import (CPU_BACKENDS, FUSED, TORCH, build_pair, clone_params, make_params,
                     set_grads, split_groups)
from tolerances import assert_close

SHAPES = [(4, 3), (7,), (1,), (0,), (5, 2)]
INTERCHANGE = [("Adam", dict(amsgrad=True, weight_decay=0.1)), ("AdamW", {}),
               ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1)), ("SGD", dict(lr=0.05))]


def run(opts_and_params, steps, start=0):
    for step in range(start, start + steps):
        set_grads([p for _, p in opts_and_params], step)
        for opt, _ in opts_and_params:
            opt.step()


def assert_same_params(ours, theirs, where):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p.detach(), q.detach(), f"{where}: param {i}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", INTERCHANGE, ids=lambda v: str(v))
@pytest.mark.parametrize("direction", ["fused->torch", "torch->fused"])
def test_state_dict_interchange(backend, algo, kwargs, direction):
    """Save after 5 steps from one class, load into the other, continue: both paths agree with
    an uninterrupted torch run."""
    params = make_params(SHAPES)
    groups = [{}, {"lr": 0.02}]
    base = clone_params(params)
    uninterrupted = TORCH[algo](split_groups(base, groups), foreach=False, **kwargs)
    first_p = clone_params(params)
    first = (FUSED[algo](split_groups(first_p, groups), backend=backend, **kwargs)
             if direction == "fused->torch" else
             TORCH[algo](split_groups(first_p, groups), foreach=False, **kwargs))
    run([(uninterrupted, base), (first, first_p)], 5)
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    second_p = clone_params(first_p)
    second = (TORCH[algo](split_groups(second_p, groups), foreach=False, **kwargs)
              if direction == "fused->torch" else
              FUSED[algo](split_groups(second_p, groups), backend=backend, **kwargs))
    second.load_state_dict(saved)
    assert set(saved["state"]) == set(second.state_dict()["state"])
    run([(uninterrupted, base), (second, second_p)], 6, start=5)
    assert_same_params(second_p, base, direction)
    for p, q in zip(second_p, base):
        for key, value in uninterrupted.state.get(q, {}).items():
            assert_close(second.state[p][key].cpu(), value.cpu(), f"{direction} state[{key}]")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_lr_scheduler_drives_lr(backend):
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("AdamW", {}, params, [{}, {"lr": 0.05}], backend)
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=12)
                  for o in (fused, reference)]
    for step in range(12):
        set_grads([ours, theirs], step)
        fused.step(), reference.step()
        for s in schedulers:
            s.step()
        assert fused.param_groups[1]["lr"] == reference.param_groups[1]["lr"]
    assert_same_params(ours, theirs, "OneCycleLR")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_set_hparam_writes_groups_and_table(backend):
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("Adam", {}, params, [{}, {}, {}], backend)
    run([(fused, ours), (reference, theirs)], 2)
    fused.set_hparam("lr", [0.1, 0.2, 0.3])
    fused.set_hparam("momentum", torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64))    # device write, betas[0]
    for g, lr, b1 in zip(reference.param_groups, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]):
        g["lr"], g["betas"] = lr, (b1, g["betas"][1])
    assert [g["lr"] for g in fused.param_groups] == [0.1, 0.2, 0.3]
    table = fused.hparam_tables[torch.device("cpu")]
    assert table[:, 0].tolist() == [0.1, 0.2, 0.3] and table[:, 2].tolist() == [0.5, 0.6, 0.7]
    run([(fused, ours), (reference, theirs)], 3, start=2)
    assert_same_params(ours, theirs, "set_hparam")
    with pytest.raises(ValueError, match="3 param groups"):
        fused.set_hparam("lr", [0.1])
    with pytest.raises(ValueError, match="unknown hyper-parameter 'dampening'"):
        fused.set_hparam("dampening", [0.0] * 3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_closure_hooks_zero_grad_add_param_group(backend):
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("SGD", dict(lr=0.1, momentum=0.9), params, [{}],
                                                backend)
    calls = []
    fused.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    fused.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    losses = []
    for opt, ps in ((fused, ours), (reference, theirs)):
        def closure(ps=ps, opt=opt):
            opt.zero_grad()
            loss = sum((p * p).sum() for p in ps)
            loss.backward()
            return loss
        losses.append([opt.step(closure).item(), opt.step(closure).item()])
    assert losses[0] == losses[1] and losses[0][1] < losses[0][0]
    assert calls == ["pre", "post", "pre", "post"]
    assert_same_params(ours, theirs, "closure")
    fused.zero_grad()
    assert all(p.grad is None for p in ours)
    extra = make_params([(6,), (2, 2)])
    extra_ours, extra_theirs = clone_params(extra), clone_params(extra)
    fused.add_param_group({"params": extra_ours, "lr": 0.3, "momentum": 0.0})
    reference.add_param_group({"params": extra_theirs, "lr": 0.3, "momentum": 0.0})
    run([(fused, ours + extra_ours), (reference, theirs + extra_theirs)], 4, start=2)
    assert_same_params(ours + extra_ours, theirs + extra_theirs, "after add_param_group")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0])
@pytest.mark.parametrize("owned", [True, False], ids=["fused-into-step", "eager"])
def test_clip_grad_norm_then_step(backend, norm_type, owned):
    """fusedopt.clip_grad_norm_ + step == torch's clip_grad_norm_ + step, whether the coefficient
    is deferred into the step (params == the optimizer's) or applied eagerly (a subset).
    No empty tensor here: torch refuses an inf-norm over one (see the next test)."""
    params = make_params([s for s in SHAPES if s != (0,)])
    fused, ours, reference, theirs = build_pair("AdamW", {}, params, [{}, {"lr": 0.01}], backend)
    for step in range(6):
        set_grads([ours, theirs], step)
        clip_ours = ours if owned else ours[:3]
        clip_theirs = theirs if owned else theirs[:3]
        n1 = fusedopt.clip_grad_norm_(clip_ours, 0.5, norm_type)
        n2 = torch.nn.utils.clip_grad_norm_(clip_theirs, 0.5, norm_type, foreach=True)
        assert_close(n1, n2.float(), f"norm at step {step}")
        fused.step(), reference.step()
    assert_same_params(ours, theirs, f"clip {norm_type}")


def test_empty_grads_add_nothing_to_any_norm():
    grads = [torch.randn(5), torch.randn(3, 2)]
    for norm_type in (2.0, float("inf"), 1.0):
        expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]), norm_type)
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads + [torch.empty(0)]]
        for p, g in zip(params, grads + [torch.empty(0)]):
            p.grad = g.clone()
        assert_close(fusedopt.clip_grad_norm_(params, 1e9, norm_type), expected, f"{norm_type}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optimizer_clip_method_and_error_if_nonfinite(backend):
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("Adam", {}, params, [{}], backend)
    for step in range(4):
        set_grads([ours, theirs], step)
        n1 = fused.clip_grad_norm_(1.0)
        n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        assert_close(n1, n2, f"norm at step {step}")
        fused.step(), reference.step()
    assert_same_params(ours, theirs, "opt.clip_grad_norm_")
    before = [p.detach().clone() for p in ours]
    ours[0].grad = torch.full_like(ours[0], float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        fusedopt.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert all(torch.equal(p.detach(), b) for p, b in zip(ours, before))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grad_scaler_unscales_inline_and_skips_inf(backend):
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("AdamW", {}, params, [{}], backend)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2) for _ in range(2)]
    for step in range(6):
        set_grads([ours, theirs], step, none_every=0)
        for ps, scaler in ((ours, scalers[0]), (theirs, scalers[1])):
            scaler.scale(torch.ones(()))        # what scaling a loss does: creates the scale
            for p in ps:
                p.grad.mul_(scaler.get_scale())
                if step == 3:
                    p.grad[...] = float("inf") if p.numel() else p.grad
        for opt, scaler in ((fused, scalers[0]), (reference, scalers[1])):
            scaler.step(opt)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    assert_same_params(ours, theirs, "GradScaler")
    assert [fused.state[p]["step"].item() for p in ours] == [5.0] * len(ours)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grad_scaler_leaves_grads_scaled(backend):
    """README "Differences from torch.optim": the fused step unscales each grad as it reads it
    and does not write it back (4 B/param saved for fp32), so after ``scaler.step`` the grads
    still hold the scaled values; torch's unscale_ leaves them unscaled."""
    params = make_params(SHAPES[:2])
    fused, ours, reference, theirs = build_pair("AdamW", {}, params, [{}], backend)
    set_grads([ours, theirs], 0, none_every=0)
    scalers = [torch.amp.GradScaler("cpu", init_scale=64.0) for _ in range(2)]
    for ps, scaler in ((ours, scalers[0]), (theirs, scalers[1])):
        scaler.scale(torch.ones(()))
        for p in ps:
            p.grad.mul_(64.0)
    scaled = [p.grad.clone() for p in ours]
    scalers[0].step(fused)
    scalers[1].step(reference)
    for p, q, g in zip(ours, theirs, scaled):
        assert torch.equal(p.grad, g), "fusedopt changed a grad"
        assert_close(q.grad * 64.0, g, "torch's grad is the unscaled one")
    assert_same_params(ours, theirs, "one scaled step")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_sgd_momentum_switched_on_later(backend, dampening):
    """A group stepped without momentum, then given momentum: the first momentum step seeds
    the buffer with the grad (torch's clone), whatever the momentum-free steps counted."""
    params = make_params(SHAPES)
    fused, ours, reference, theirs = build_pair("SGD", dict(lr=0.05), params, [{}], backend)
    for step in range(5):
        if step == 2:
            for opt in (fused, reference):
                opt.param_groups[0].update(momentum=0.9, dampening=dampening)
        set_grads([ours, theirs], step, none_every=0)
        fused.step()
        reference.step()
        assert_same_params(ours, theirs, f"step {step}")
    for p, q in zip(ours, theirs):
        assert_close(fused.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"],
                     "momentum_buffer")


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_python_work_per_step_does_not_grow(backend):
    """Note [pack once]: after the first step, the Python calls made by a step are the same for
    10 and for 500 parameters in as many groups (only compiled code grows)."""
    def count_calls(n):
        params = make_params([(3,)] * n)
        opt = fusedopt.FusedAdamW([{"params": [p]} for p in params], backend=backend)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        calls = [0]

        def profiler(frame, event, arg):
            if event == "call":
                calls[0] += 1
        sys.setprofile(profiler)
        try:
            opt.step()
        finally:
            sys.setprofile(None)
        return calls[0]
    assert count_calls(10) == count_calls(500)


def test_pickle_and_deepcopy_keep_working():
    params = make_params(SHAPES)
    opt = fusedopt.FusedAdam(params, lr=0.1, backend="reference")
    set_grads([params], 0)
    opt.step()
    clone = copy.deepcopy(opt)
    assert clone.backend == "reference" and clone._step_supports_amp_scaling
    restored = pickle.loads(pickle.dumps(opt))
    restored.param_groups[0]["lr"] = 0.5
    assert restored.hparam_tables[torch.device("cpu")][0, 0].item() == 0.5
