"""The edges of the torch.optim drop-in found with torch's own optimizer test inputs (issue 16),
each checked against torch: per-group option combinations torch accepts, Tensor lrs of several
elements, meta-device params, and torch's wording in the errors for bad values."""
import itertools

import pytest
import torch

import fusedopt
from helpers import CPU_BACKENDS, FUSED, TORCH, clone_params, make_params, set_grads
from tolerances import assert_close

SHAPES = [(5,), (3, 4), (7,)]


def groups_of(params_per_group, options):
    return [dict(o, params=ps) for ps, o in zip(params_per_group, options)]


def run_both(algo, defaults, options, backend, steps=6):
    """fusedopt and torch's for-loop optimizer with one group per entry of ``options`` over the
    same params and grads (None on some steps); params and state compared after every step."""
    base = [make_params(SHAPES) for _ in options]
    ours, theirs = [clone_params(ps) for ps in base], [clone_params(ps) for ps in base]
    opt = FUSED[algo](groups_of(ours, options), backend=backend, **defaults)
    ref = TORCH[algo](groups_of(theirs, options), foreach=False, **defaults)
    flat_ours, flat_theirs = sum(ours, []), sum(theirs, [])
    for step in range(steps):
        set_grads([flat_ours, flat_theirs], step)
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(flat_ours, flat_theirs)):
            g = i // len(SHAPES)
            where = f"step {step}, group {options[g]}, param {i}"
            assert_close(p.detach(), q.detach(), where)
            for key, value in ref.state.get(q, {}).items():
                assert_close(opt.state[p][key].reshape(value.shape), value, f"{where} {key}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sgd_groups_take_every_combination_torch_takes(backend):
    """torch checks nesterov against momentum and dampening for the defaults only: a group
    may turn nesterov on beside an inherited dampening (it then steps with both), or beside
    momentum 0 (plain SGD). 16 groups: nesterov x momentum x dampening x maximize."""
    options = [dict(nesterov=n, maximize=mx, **({} if m is None else {"momentum": m}),
                    **({} if d is None else {"dampening": d}))
               for n, m, d, mx in itertools.product((False, True), (None, 0.0), (None, 0.0),
                                                    (False, True))]
    run_both("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.01), options,
             backend)


def test_nesterov_with_inherited_dampening_is_accepted():
    """The case of issue 16, alone: torch accepts it and so does fusedopt."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    group = [{"params": [p], "nesterov": True}]
    torch.optim.SGD([{"params": [q], "nesterov": True}], lr=0.1, momentum=0.9, dampening=0.3)
    opt = fusedopt.FusedSGD(group, lr=0.1, momentum=0.9, dampening=0.3)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["dampening"] == 0.3
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "nesterov": True,
                         "momentum": 0.0})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo", ["Adam", "AdamW"])
def test_adam_groups_take_every_combination_torch_takes(backend, algo):
    """amsgrad x maximize x decoupled_weight_decay per group (AdamW's groups may turn decoupled
    decay off), plus a group with Tensor lr and betas."""
    options = [dict(amsgrad=a, maximize=mx, decoupled_weight_decay=d)
               for a, mx, d in itertools.product((False, True), repeat=3)]
    options.append(dict(lr=torch.tensor(0.02), betas=(torch.tensor(0.8), torch.tensor(0.95))))
    run_both(algo, dict(lr=0.01, weight_decay=0.05), options, backend)


@pytest.mark.parametrize("algo", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("where", ["constructor", "group", "add_param_group"])
def test_tensor_lr_must_have_one_element(algo, where):
    """torch: ValueError("Tensor lr must be 1-element") from its constructor; fusedopt says the
    same wherever the lr enters (groups are checked as they join)."""
    lr = torch.tensor([0.01, 0.01])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element") as theirs:
        TORCH[algo]([torch.nn.Parameter(torch.ones(2))], lr=lr)
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=str(theirs.value)):
        if where == "constructor":
            FUSED[algo]([p], lr=lr)
        elif where == "group":
            FUSED[algo]([{"params": [p], "lr": lr}], lr=0.01)
        else:
            FUSED[algo]([torch.nn.Parameter(torch.ones(2))], lr=0.01).add_param_group(
                {"params": [p], "lr": lr})


@pytest.mark.parametrize("algo", ["Adam", "AdamW"])
def test_tensor_betas_must_have_one_element(algo):
    """torch's constructor means to say "Tensor betas[1] must be 1-element" but compares the
    tensor first (RuntimeError: Boolean value of Tensor with more than one value is ambiguous,
    torch 2.13); fusedopt says it, in torch's words."""
    betas = (torch.tensor(0.9), torch.tensor([0.9, 0.99]))
    with pytest.raises(RuntimeError, match="more than one value"):
        TORCH[algo]([torch.nn.Parameter(torch.ones(2))], betas=betas)
    with pytest.raises(ValueError, match=r"^Tensor betas\[1\] must be 1-element"):
        FUSED[algo]([torch.nn.Parameter(torch.ones(2))], betas=betas)


@pytest.mark.parametrize("algo", ["Adam", "AdamW", "SGD"])
def test_meta_params_get_an_error_naming_the_device(algo):
    """torch's fused optimizers refuse meta params at their step; fusedopt too, before it
    allocates anything, naming the param and the device. Constructing is fine, as in torch."""
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.empty(4, device="meta"))]
    opt = FUSED[algo](params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"params\[1\] is on the meta device"):
        opt.step()
    with pytest.raises(RuntimeError, match="meta device"):
        opt.clip_grad_norm_(1.0)
    assert torch.equal(params[0].grad, torch.ones(3)) and not opt.state


# (algorithm, constructor keywords): each bad value torch's constructors reject
BAD_VALUES = [
    ("Adam", dict(lr=-1.0)), ("Adam", dict(eps=-1e-8)), ("Adam", dict(betas=(1.0, 0.0))),
    ("Adam", dict(betas=(0.9, 1.0))), ("Adam", dict(weight_decay=-1)),
    ("AdamW", dict(lr=-0.5)), ("AdamW", dict(betas=(-0.1, 0.999))),
    ("AdamW", dict(weight_decay=-0.01)),
    ("SGD", dict(lr=-0.1)), ("SGD", dict(momentum=-0.5)), ("SGD", dict(weight_decay=-1)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
]


@pytest.mark.parametrize("algo,kwargs", BAD_VALUES,
                         ids=[f"{a}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for a, kw in BAD_VALUES])
def test_bad_values_use_torch_wording_and_name_the_argument(algo, kwargs):
    """The message starts with torch's own (what a user searches for) and names the argument."""
    with pytest.raises(ValueError) as theirs:
        TORCH[algo]([torch.nn.Parameter(torch.ones(2))], **kwargs)
    with pytest.raises(ValueError) as ours:
        FUSED[algo]([torch.nn.Parameter(torch.ones(2))], **kwargs)
    torch_message, message = str(theirs.value), str(ours.value)
    assert torch_message in message, f"{message!r} lacks torch's {torch_message!r}"
    name = {"betas": "betas[0]" if "index 0" in torch_message else "betas[1]"}.get(
        next(iter(kwargs)), next(iter(kwargs)))
    assert name in message, f"{message!r} does not name {name}"
