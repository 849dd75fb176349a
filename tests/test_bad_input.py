"""Bad input raises a clear error naming the argument, before any parameter or state changes."""
import pytest
import torch

import fusedopt
from helpers import CPU_BACKENDS, make_params

P = lambda: [torch.nn.Parameter(torch.randn(3))]  # noqa: E731

CONSTRUCTION = [      # torch's wording first (tests/test_dropin_edges.py), then the argument
    (fusedopt.FusedAdam, dict(lr=-1.0), ValueError, r"^Invalid learning rate: -1.0; expected lr"),
    (fusedopt.FusedAdam, dict(eps=-1e-8), ValueError, r"^Invalid epsilon value: -1e-08; expected eps"),
    (fusedopt.FusedAdam, dict(betas=(1.0, 0.999)), ValueError,
     r"^Invalid beta parameter at index 0: 1.0; expected betas\[0\] in \[0.0, 1.0\)"),
    (fusedopt.FusedAdam, dict(betas=(0.9, -0.1)), ValueError,
     r"^Invalid beta parameter at index 1: -0.1; expected betas\[1\]"),
    (fusedopt.FusedAdam, dict(betas=0.9), ValueError, "betas"),
    (fusedopt.FusedAdamW, dict(weight_decay=-0.1), ValueError,
     r"^Invalid weight_decay value: -0.1; expected weight_decay"),
    (fusedopt.FusedAdamW, dict(lr="fast"), TypeError, r"^Invalid learning rate: 'fast'; expected lr"),
    (fusedopt.FusedAdamW, dict(lr=torch.tensor([1e-3, 1e-3])), ValueError,
     r"^Tensor lr must be 1-element"),
    (fusedopt.FusedSGD, dict(momentum=-0.5), ValueError, r"^Invalid momentum value: -0.5; expected momentum"),
    (fusedopt.FusedSGD, dict(nesterov=True), ValueError,
     "nesterov=True: Nesterov momentum requires a momentum and zero dampening"),
    (fusedopt.FusedSGD, dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, "nesterov"),
    (fusedopt.FusedSGD, dict(weight_decay=-1.0), ValueError, r"^Invalid weight_decay value: -1.0"),
    (fusedopt.FusedAdam, dict(backend="tpu"), ValueError, "backend.*available"),
    (fusedopt.FusedAdam, dict(differentiable=True), NotImplementedError, "differentiable"),
    (fusedopt.FusedAdam, dict(not_an_arg=1), TypeError, "not_an_arg"),
]


@pytest.mark.parametrize("cls,kwargs,exc,match", CONSTRUCTION,
                         ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _, _ in CONSTRUCTION])
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    params = P()
    before = params[0].detach().clone()
    with pytest.raises(exc, match=match):
        cls(params, **kwargs)
    assert torch.equal(params[0].detach(), before)


def test_unavailable_backend_lists_the_available_ones():
    unavailable = [b for b in ("cuda", "triton", "cpu") if b not in fusedopt.available_backends()]
    if not unavailable:
        pytest.skip("every backend is available on this machine")
    with pytest.raises(RuntimeError, match=r"not available.*Available backends: \["):
        fusedopt.FusedAdam(P(), backend=unavailable[0])


@pytest.mark.parametrize("params,exc,match", [
    ([], ValueError, "empty parameter list"),
    ({torch.nn.Parameter(torch.randn(2))}, TypeError, "ordered collection"),
    (torch.nn.Parameter(torch.randn(2)), TypeError, "iterable of Tensors"),
    ([torch.zeros(3, dtype=torch.complex64, requires_grad=True)], TypeError, "complex64"),
    ([torch.zeros(3, dtype=torch.int64)], TypeError, "int64"),
], ids=["empty", "set", "tensor", "complex", "integer"])
def test_bad_parameter_lists(params, exc, match):
    with pytest.raises(exc, match=match):
        fusedopt.FusedAdamW(params)


def test_parameter_in_two_groups():
    p = torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        fusedopt.FusedSGD([{"params": [p]}, {"params": [p], "lr": 0.1}])


def test_bad_group_hparams_rejected_at_add_param_group():
    opt = fusedopt.FusedAdam(P())
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1; expected lr"):
        opt.add_param_group({"params": P(), "lr": -0.1})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sparse_grad_raises_before_any_change(backend):
    params = make_params([(4, 3), (5,)])
    opt = fusedopt.FusedAdam(params, backend=backend)
    before = [p.detach().clone() for p in params]
    params[0].grad = torch.randn(4, 3)
    params[1].grad = torch.randn(5).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert not opt.state or all("exp_avg" not in s or s["step"].item() == 0
                                for s in opt.state.values())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_value_written_by_a_scheduler_raises_before_the_step(backend):
    params = make_params([(4,)])
    opt = fusedopt.FusedSGD(params, lr=0.1, backend=backend)
    params[0].grad = torch.ones(4)
    opt.step()
    before = params[0].detach().clone()
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert torch.equal(params[0].detach(), before)


@pytest.mark.parametrize("max_norm,norm_type,exc,match", [
    (-1.0, 2.0, ValueError, "max_norm"), ("big", 2.0, TypeError, "max_norm"),
    (1.0, -2.0, ValueError, "norm_type"), (1.0, "fro", ValueError, "norm_type"),
])
def test_bad_clip_arguments(max_norm, norm_type, exc, match):
    params = P()
    params[0].grad = torch.ones(3)
    with pytest.raises(exc, match=match):
        fusedopt.clip_grad_norm_(params, max_norm, norm_type)
    assert torch.equal(params[0].grad, torch.ones(3))
