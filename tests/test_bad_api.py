"""The bad-input battery across the whole API (issue #8): every case raises an error of the
right type whose message names the culprit, and leaves parameters, state and hyper-parameters
exactly as they were."""
import pytest
import torch

import fusedopt
from fusedopt import schedulers as S


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def trained():
    """A model and fusedopt optimizer that have stepped once (so state exists)."""
    m = model()
    opt = fusedopt.FusedAdamW(m.parameters(), lr=0.1)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def snapshot(m, opt):
    """Params, the whole optimizer state (which params have state, each one's keys and values,
    by the param's index in the model) and the hyper-parameters of every group."""
    index = {p: i for i, p in enumerate(m.parameters())}
    state = {index.get(p, repr(p)): {k: v.clone() if torch.is_tensor(v) else v
                                     for k, v in s.items()}
             for p, s in opt.state.items()}
    return ([p.detach().clone() for p in m.parameters()], state,
            [(g["lr"], g["betas"], g["weight_decay"], len(g["params"])) for g in opt.param_groups])


def _same(a, b):
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype
                and torch.equal(a, b))
    return a == b


def unchanged(before, after):
    """Equal params, hyper-parameters and state: the same params with state, the same keys in
    each, equal values (a state added, dropped or changed by a failed call shows)."""
    (p0, s0, h0), (p1, s1, h1) = before, after
    return (len(p0) == len(p1) and all(torch.equal(a, b) for a, b in zip(p0, p1)) and h0 == h1
            and s0.keys() == s1.keys()
            and all(s0[i].keys() == s1[i].keys() and all(_same(s0[i][k], s1[i][k]) for k in s0[i])
                    for i in s0))


def grad_of_wrong_dtype(m, opt):
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    list(m.parameters())[1].grad = torch.ones(4, dtype=torch.float64)
    opt.step()


CASES = {
    # schedulers
    "LinearLR start_factor": (lambda m, o: S.LinearLR(o, start_factor=2.0), ValueError, "start_factor"),
    "empty window": (lambda m, o: S.StepLR(o, step_size=1, begin=5, end=5), ValueError, "begin"),
    "unknown scheduler": (lambda m, o: fusedopt.build_param_scheduler(o, dict(type="NoSuchLR")),
                          KeyError, "NoSuchLR"),
    "convert without epoch_length": (
        lambda m, o: fusedopt.build_param_scheduler(
            o, dict(type="LinearLR", by_epoch=True, convert_to_iter_based=True)),
        Exception, "epoch_length"),
    "eta_min and eta_min_ratio": (
        lambda m, o: S.CosineAnnealingLR(o, T_max=5, eta_min=0.1, eta_min_ratio=0.1),
        ValueError, "eta_min"),
    "plateau rule": (lambda m, o: S.ReduceOnPlateauLR(o, rule="sideways"), ValueError, "rule"),
    # config layer
    "optimizer lr": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedAdam", lr=-1.0))), ValueError,
        "Invalid learning rate: -1.0; expected lr"),
    "optimizer kwarg": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedAdam", lr=0.1, momentun=0.9))), TypeError, "momentun"),
    "unknown optimizer": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedAdamm"))), KeyError, "FusedAdam"),
    "paramwise key": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedSGD", lr=0.1), paramwise_cfg=dict(norm_decay=0.0))),
        ValueError, "norm_decay"),
    "accumulative_counts": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedSGD", lr=0.1), accumulative_counts=0)),
        ValueError, "accumulative_counts"),
    "clip_grad type": (lambda m, o: fusedopt.build_optim_wrapper(
        m, dict(optimizer=dict(type="FusedSGD", lr=0.1), clip_grad=dict(type="scale", max_norm=1))),
        ValueError, "clip_grad"),
    # optimizer and clipping
    "set_hparam length": (lambda m, o: o.set_hparam("lr", [0.1, 0.2]), ValueError, "param groups"),
    "set_hparam name": (lambda m, o: o.set_hparam("momentum_", [0.1]), ValueError, "momentum_"),
    "grad dtype": (grad_of_wrong_dtype, RuntimeError, "dtype"),
    "clip max_norm": (lambda m, o: fusedopt.clip_grad_norm_(m.parameters(), -1.0),
                      ValueError, "max_norm"),
    "bad lr from a scheduler": (
        lambda m, o: (o.param_groups[0].__setitem__("lr", -0.5), o.step()), ValueError,
        "Invalid learning rate: -0.5; expected lr"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_and_changes_nothing(name):
    call, exc, culprit = CASES[name]
    m, opt = trained()
    before = snapshot(m, opt)
    with pytest.raises(exc, match=culprit):
        call(m, opt)
    if name == "bad lr from a scheduler":
        opt.param_groups[0]["lr"] = 0.1   # the write itself is the user's; the step refused it
    assert unchanged(before, snapshot(m, opt)), f"{name}: something changed"
