"""The C++ host path of a step (issue 28; Note [pack-time checks] in csrc/bucket.h, Note
[persistent steps] in csrc/cpu/ops.cpp): after the first step a bucket's params, states and
counters are checked in full only when their prints change, and the cpu driver keeps each
param's kernel arguments between steps. These tests change, between steps, everything a user
can change without the optimizer rebuilding its buckets, and hold every step against the
reference backend."""
import pytest
import torch

import fusedopt
from helpers import compare_runs, make_params, set_grads, split_groups

CASES = [("FusedAdamW", dict(lr=1e-2, weight_decay=1e-2)),
         ("FusedSGD", dict(lr=1e-2, momentum=0.9)),
         ("FusedLARS", dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)),   # two stages
         ("FusedLAMB", dict(lr=1e-2, weight_decay=1e-2))]
# empty, one element, odd, a 2-D one (its grad is given another layout below), a larger one
SHAPES = [(0,), (1,), (33,), (7, 5), (1000,)]
GROUPS = [{}, {"lr": 3e-3}, {"lr": 2e-2, "weight_decay": 0.0}]


def twins(name, kwargs):
    params = make_params(SHAPES)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    cls = getattr(fusedopt, name)
    return (ours, cls(split_groups(ours, GROUPS), backend="cpu", **kwargs),
            theirs, cls(split_groups(theirs, GROUPS), backend="reference", **kwargs))




@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_moved_storage_and_changed_layouts_are_followed(name, kwargs):
    """`p.data = ...` and a state's `.data = ...` move the storage the kept kernel arguments
    point at: the next steps must write the new storage and never the old one (kept alive here,
    so that a stale pointer would show as a param that stops moving and an old copy that moves).
    A grad laid out unlike its param for one step goes through the staging path, and the step
    after it must be back at the param's own memory."""
    ours, opt, theirs, opt_ref = twins(name, kwargs)
    old = []
    for step in range(7):
        set_grads([ours, theirs], step, none_every=3)
        if step == 2:                              # every param moves
            for p in ours:
                old.append((p.detach(), p.detach().clone()))
                p.data = p.detach().clone()
        if step == 3:                              # and every state tensor
            for p in ours:
                for key, value in opt.state[p].items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        old.append((value.detach(), value.clone()))
                        value.data = value.clone()
        if step == 4 and ours[3].grad is not None:   # a transposed layout for one step
            g = ours[3].grad
            ours[3].grad = torch.empty(tuple(reversed(g.shape))).t().copy_(g)
            assert not ours[3].grad.is_contiguous()
        opt.step()
        opt_ref.step()
        compare_runs(ours, theirs, opt, opt_ref, f"{name} step {step}")
    assert old
    for i, (tensor, copy) in enumerate(old):
        assert torch.equal(tensor, copy), f"{name}: storage {i}, left by `.data =`, was written"


def test_changed_dtype_is_found_before_any_change():
    """A print that differs sends the step through the full checks, with their messages, before
    anything is written."""
    params = make_params([(5,), (5,), (5,)])
    opt = fusedopt.FusedAdamW([{"params": [p]} for p in params], lr=1e-2, backend="cpu")
    for p in params:
        p.grad = torch.randn(5)
    opt.step()
    opt.step()
    params[1].data = params[1].detach().double()
    params[1].grad = torch.randn(5, dtype=torch.float64)
    before = [t.clone() for p in params for t in (p.detach(), *opt.state[p].values())]
    with pytest.raises(TypeError, match=r"params\[1\] has dtype Double; the bucket's dtype is "
                                        r"Float"):
        opt.step()
    after = [t for p in params for t in (p.detach(), *opt.state[p].values())]
    assert all(torch.equal(a.double(), b.double()) for a, b in zip(after, before))


def test_grad_checks_run_at_every_step():
    """Grads are new at every step: a grad of the wrong shape after steps that passed is named
    (torch checks a grad's shape when it is assigned, not when its `.data` is)."""
    params = make_params([(5,), (6,)])
    opt = fusedopt.FusedSGD(params, lr=0.1, momentum=0.9, backend="cpu")
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.step()
    params[1].grad.data = torch.randn(3, 2)
    with pytest.raises(RuntimeError, match=r"grad of params\[1\] has shape \[3, 2\] but "
                                           r"params\[1\] has \[6\]"):
        opt.step()


def aten_calls(step):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}


def test_steady_step_allocates_nothing():
    """Issue 28: no allocation in a steady-state step (cpu backend: nothing is staged while
    params, grads and states are laid out alike). A grad in another layout is staged: one
    contiguous copy of it, no more."""
    params = make_params([(64,)] * 20 + [(8, 5)])
    opt = fusedopt.FusedAdamW([{"params": [p]} for p in params], lr=1e-3, backend="cpu")
    for p in params:
        p.grad = torch.randn(p.shape)
    for _ in range(3):
        opt.step()
    assert aten_calls(opt.step) == {}
    params[-1].grad = torch.randn(5, 8).t()
    assert aten_calls(opt.step) == {"aten::empty_strided": 1, "aten::copy_": 1}
    params[-1].grad = torch.randn(8, 5)
    assert aten_calls(opt.step) == {}


def test_storage_resized_in_place_is_followed():
    """FSDP frees a param's memory and refills it with `untyped_storage().resize_()`: the data
    moves under the same storage object, and the next step must write where it is now."""
    ours, opt, theirs, opt_ref = twins("FusedAdamW", dict(lr=1e-2, weight_decay=1e-2))
    for step in range(4):
        set_grads([ours, theirs], step, none_every=0)
        if step == 2:
            for p in ours[1:]:
                saved = p.detach().clone()
                storage = p.untyped_storage()
                nbytes = storage.nbytes()
                before = p.data_ptr()
                storage.resize_(0)
                blocker = torch.empty(nbytes, dtype=torch.uint8)   # may take the freed block
                storage.resize_(nbytes)
                del blocker
                assert p.data_ptr() != before
                with torch.no_grad():
                    p.copy_(saved)
        opt.step()
        opt_ref.step()
        compare_runs(ours, theirs, opt, opt_ref, f"step {step}")
