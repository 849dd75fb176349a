"""What a newcomer meets first (issue 17): error texts that name what is wrong and where."""
import pytest
import torch

import fusedopt
from fusedopt import backends
from helpers import CPU_BACKENDS

# every backend that steps CPU tensors here (triton: under TRITON_INTERPRET=1)
STEP_BACKENDS = CPU_BACKENDS + (["triton"] if "triton" in fusedopt.available_backends() else [])


def _param(n):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    return p


@pytest.mark.parametrize("value,exc,match", [
    ("bogus", ValueError, r"Invalid backend: 'bogus' \(from the environment variable "
                          r"FUSEDOPT_BACKEND\); expected 'auto' or one of"),
    *[(b, RuntimeError, rf"backend='{b}' \(from the environment variable FUSEDOPT_BACKEND\) is "
                        "not available")
      for b in ("cuda", "triton", "cpu") if b not in fusedopt.available_backends()],
])
def test_backend_from_environment_names_the_variable(monkeypatch, value, exc, match):
    monkeypatch.setenv("FUSEDOPT_BACKEND", value)
    p = _param(3)
    before = p.detach().clone()
    opt = fusedopt.FusedAdamW([p])
    with pytest.raises(exc, match=match):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state


def test_backend_argument_error_unchanged():
    with pytest.raises(ValueError, match=r"^Invalid backend: 'bogus'; expected"):
        backends.check_backend("bogus")


def test_unknown_type_error_prints_without_quotes():
    with pytest.raises(KeyError) as info:
        fusedopt.build_optim_wrapper(torch.nn.Linear(2, 2), dict(
            type="OptimWrapper", optimizer=dict(type="FusedAdamm", lr=0.1)))
    text = str(info.value)
    assert text.startswith("optim_wrapper.optimizer.type: FusedAdamm is not in the"), text
    assert "Did you mean: 'FusedAdam'" in text and not text.endswith(('"', "'"))
    assert isinstance(info.value, TypeError)            # what mmengine's constructor raises


def _mismatch(kind, n):
    """A grad that torch lets through (``.grad.data`` skips autograd's check) but that does not
    fit a parameter of ``n`` fp32 elements."""
    return torch.randn(n + 1) if kind == "shape" else torch.randn(n, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["shape", "dtype"])
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_grad_mismatch_on_first_step_names_group_and_index(backend, kind):
    a, b, c = _param(3), _param(4), _param(2)
    opt = fusedopt.FusedAdamW([{"params": [a]}, {"params": [c, b], "lr": 1e-2}], backend=backend)
    b.grad.data = _mismatch(kind, 4)
    before = [p.detach().clone() for p in (a, b, c)]
    with pytest.raises(RuntimeError, match=r"^grad of param_groups\[1\]\['params'\]\[1\]: shape"):
        opt.step()
    assert all(torch.equal(p.detach(), x) for p, x in zip((a, b, c), before))


@pytest.mark.parametrize("kind", ["shape", "dtype"])
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_grad_mismatch_names_the_named_parameter(backend, kind):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    opt = fusedopt.FusedAdamW(model.named_parameters(), backend=backend)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[1].bias.grad.data = _mismatch(kind, 2)
    with pytest.raises(RuntimeError, match=r"grad of param_groups\[0\]\['params'\]\[3\] \('1.bias'\)"):
        opt.step()


@pytest.mark.skipif("triton" not in fusedopt.available_backends(), reason="triton unavailable")
@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_triton_grad_mismatch_after_first_step_names_the_parameter(kind):
    a, b = _param(3), _param(4)
    opt = fusedopt.FusedAdamW([{"params": [a]}, {"params": [b]}], backend="triton")
    opt.step()
    b.grad.data = _mismatch(kind, 4)
    with pytest.raises(RuntimeError, match=r"^grad of param_groups\[1\]\['params'\]\[0\]: shape"):
        opt.step()
