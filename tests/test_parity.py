"""fusedopt vs torch.optim (for-loop): params AND state over many steps (issue #2)."""
import pytest
import torch

from helpers import (CASES, CASE_IDS, CPU_BACKENDS, FUSED, TORCH, build_pair, clone_params,
                     group_overrides, make_params, set_grads, split_groups)
from tolerances import LOW_PRECISION_FACTOR, assert_close, max_error

SHAPES = [(0,), (1,), (7,), (3, 5), (33, 17), (12, 10), (4, 1, 3)]
NONCONTIGUOUS = (5,)          # (12, 10) is a transposed view
STEPS = 12


def compare(ours, theirs, fused, reference, where):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p.detach(), q.detach(), f"{where}: param {i} {tuple(p.shape)}")
        s, t = fused.state.get(p, {}), reference.state.get(q, {})
        assert set(s) == set(t), f"{where}: param {i} state keys {sorted(s)} != torch {sorted(t)}"
        for key in t:
            if torch.is_tensor(t[key]):
                assert_close(s[key].detach().cpu(), t[key].detach().cpu(),
                             f"{where}: param {i} state[{key!r}]")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("algo,kwargs", CASES, ids=CASE_IDS)
def test_matches_torch_over_steps(backend, dtype, algo, kwargs):
    params = make_params(SHAPES, dtype, NONCONTIGUOUS)
    fused, ours, reference, theirs = build_pair(algo, kwargs, params,
                                                group_overrides(algo, kwargs), backend)
    for step in range(STEPS):
        set_grads([ours, theirs], step)
        fused.step()
        reference.step()
        if step in (0, STEPS - 1):
            compare(ours, theirs, fused, reference, f"step {step}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(amsgrad=True)),
                                         ("SGD", dict(momentum=0.9, nesterov=True))],
                         ids=["AdamW-amsgrad", "SGD-nesterov"])
def test_large_and_strided_tensors(backend, algo, kwargs):
    """> 2^20 elements (crosses chunk boundaries), and a grad whose strides differ from its
    non-contiguous parameter's."""
    params = make_params([((1 << 20) + 3,), (64, 48)], torch.float32, noncontiguous=(1,))
    fused, ours, reference, theirs = build_pair(algo, kwargs, params, [{}], backend)
    for step in range(10):
        set_grads([ours, theirs], step, none_every=0)
        ours[1].grad = ours[1].grad.contiguous()       # strides differ from the param's
        fused.step()
        reference.step()
    compare(ours, theirs, fused, reference, "after 10 steps")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("algo,kwargs", [("AdamW", dict(weight_decay=0.1)),
                                         ("Adam", dict(amsgrad=True)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))],
                         ids=["AdamW", "Adam-amsgrad", "SGD-momentum"])
def test_low_precision_error_bound(backend, dtype, algo, kwargs):
    """Low precision: error against an fp64 run <= 2x the error of torch's fused
    implementation in the same dtype (fusedopt computes in fp32 internally)."""
    master = make_params([(257,), (31, 9), (1000,)], torch.float64)
    oracle = clone_params(master)
    low_ours, low_torch = clone_params(master, dtype), clone_params(master, dtype)
    opt_oracle = TORCH[algo](oracle, foreach=False, **kwargs)
    opt_torch = TORCH[algo](low_torch, fused=True, **kwargs)
    opt_ours = FUSED[algo](low_ours, backend=backend, **kwargs)
    for step in range(15):
        set_grads([oracle, low_torch, low_ours], step, none_every=0)
        for opt in (opt_oracle, opt_torch, opt_ours):
            opt.step()
    err_ours, err_torch = max_error(low_ours, oracle), max_error(low_torch, oracle)
    assert err_ours <= LOW_PRECISION_FACTOR * err_torch, (
        f"{dtype}: fusedopt error {err_ours:.3g} > {LOW_PRECISION_FACTOR} x torch fused {err_torch:.3g}")
    state_ours = [opt_ours.state[p] for p in low_ours]
    assert all(s["step" if algo != "SGD" else "momentum_buffer"].dtype
               in (torch.float32, dtype) for s in state_ours)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_many_groups_each_own_hparams(backend):
    """One group per parameter (what paramwise configs build), each with its own lr and decay."""
    params = make_params([(5,)] * 40)
    groups = [{"lr": 1e-3 * (i + 1), "weight_decay": 0.01 * (i % 3)} for i in range(40)]
    fused, ours, reference, theirs = build_pair("AdamW", {}, params, groups, backend)
    for step in range(10):
        set_grads([ours, theirs], step)
        fused.step()
        reference.step()
    compare(ours, theirs, fused, reference, "40 groups")
