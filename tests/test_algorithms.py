"""The algorithms as units (Note [algorithm as data]): the descriptors against the C++ table, the
new optimizers' oracles (the reference backend) against independent implementations, and every
class's backends against the reference over many steps."""
import copy
import math

import pytest
import torch

import fusedopt
from fusedopt.algorithms import ALGORITHMS, optimizer_classes
from helpers import clone_params, make_params, set_grads, split_groups
from tolerances import TOLERANCE, assert_close, assert_within_ulp

BACKENDS = [b for b in ("cpu", "triton") if b in fusedopt.available_backends()]
SHAPES = [(0,), (1,), (7,), (3, 5), (33, 17), (12, 10), (2049,)]   # (12, 10): a transposed view

# per class: constructor options and three groups with different hyper-parameters (the third
# of LARS is excluded from adaptation, as configs exclude norms and biases)
NEW_CASES = {
    "FusedLion": [(dict(lr=1e-3, weight_decay=0.1),
                   [{"lr": 3e-4}, {"betas": (0.95, 0.98), "weight_decay": 0.0}, {}]),
                  (dict(maximize=True), [{}, {"lr": 2e-4}, {"weight_decay": 1.0}])],
    "FusedLARS": [(dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
                   [{"lr": 0.3}, {"eta": 0.02, "weight_decay": 0.0},
                    {"lars_exclude": True, "weight_decay": 0.0}]),
                  (dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                   [{}, {"momentum": 0.5}, {"lars_exclude": True}]),
                  (dict(lr=0.05, momentum=0.9, dampening=0.2, maximize=True),
                   [{}, {"momentum": 0.0}, {"eps": 1e-3}]),
                  (dict(lr=0.1), [{}, {"weight_decay": 1e-2}, {"lars_exclude": True}])],
    "FusedLAMB": [(dict(lr=1e-2), [{}, {"weight_decay": 0.0}, {"betas": (0.8, 0.99)}]),
                  (dict(lr=1e-2, max_grad_norm=0.5, trust_clip=True, always_adapt=True),
                   [{}, {"weight_decay": 0.0}, {"eps": 1e-4}]),
                  (dict(lr=1e-2, bias_correction=False, grad_averaging=False, adam_w_mode=False,
                        max_grad_norm=None), [{}, {"weight_decay": 0.1}, {"lr": 1e-3}]),
                  (dict(lr=1e-2, maximize=True), [{}, {"lr": 3e-3}, {}])],
}
NEW_IDS = [(name, i) for name, cases in NEW_CASES.items() for i in range(len(cases))]


def test_every_class_is_registered_from_its_descriptor():
    classes = optimizer_classes()
    assert set(classes) == {"FusedAdam", "FusedAdamW", "FusedSGD", "FusedLion", "FusedLARS",
                            "FusedLAMB"}
    for name, cls in classes.items():
        assert getattr(fusedopt, name) is cls
        assert cls in cls.ALGORITHM.classes
        assert fusedopt.OPTIMIZERS.get(name) is cls
    # mmpretrain's names build the drop-ins (its configs say type='LARS' and 'Lamb')
    assert fusedopt.OPTIMIZERS.get("LARS") is fusedopt.FusedLARS
    assert fusedopt.OPTIMIZERS.get("Lamb") is fusedopt.FusedLAMB


def test_cpp_table_mirrors_the_descriptors():
    C = fusedopt.backends.named("cpu")._extension()
    for algo in ALGORITHMS.values():
        info = C.algorithm_info(algo.id)
        assert (info["name"], info["two_stage"]) == (algo.name, algo.two_stage), algo.name


@pytest.mark.parametrize("dtype, master, expected", [
    (torch.float32, False, {"adam": 28, "adam+amsgrad": 36, "sgd+momentum": 20, "sgd": 12}),
    (torch.bfloat16, False, {"adam": 14, "sgd": 6}),
    (torch.bfloat16, True, {"adam": 28, "sgd+momentum": 20}),
])
def test_bytes_per_param_closed_forms(dtype, master, expected):
    """design.md's table: fp32 AdamW 28 B/param/step, AMSGrad 36, SGD with momentum 20, without
    12; bf16 AdamW 14, with fp32 masters and fp32 states 28 (issue 25)."""
    for case, value in expected.items():
        name, _, flag = case.partition("+")
        algo = ALGORITHMS[name]
        assert algo.bytes_per_param(dtype, algo.flags_word({flag: True}), master) == value, case


# ---- the oracles: the reference backend against independent implementations ----------------
def _lion_pytorch_run(params, groups, steps):
    lion = pytest.importorskip("lion_pytorch", reason="lion-pytorch (a test extra) is missing")
    opt = lion.Lion(split_groups(params, groups), lr=1e-3, weight_decay=0.1)
    for step in range(steps):
        set_grads([params], step)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lion_reference_is_lion_pytorch_bitwise(dtype):
    """The paper's Algorithm 2 as lion-pytorch (mmengine's test extra) writes it."""
    groups = [{"lr": 3e-4}, {"betas": (0.95, 0.98), "weight_decay": 0.0}, {}]
    base = make_params([(7,), (3, 5), (33, 17)], dtype)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedopt.FusedLion(split_groups(ours, groups), lr=1e-3, weight_decay=0.1,
                             backend="reference")
    for step in range(12):
        set_grads([ours], step)
        opt.step()
    lion = _lion_pytorch_run(theirs, groups, 12)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert torch.equal(p, q), f"param {i}"
        if q in lion.state:
            assert torch.equal(opt.state[p]["exp_avg"], lion.state[q]["exp_avg"]), f"exp_avg {i}"


def _lars_loop(params, groups, defaults, steps):
    """mmpretrain's LARS step, written out plainly from its published semantics (no
    maximize): norms read as Python floats, local lr eta*|w| / (|g| + wd*|w| + eps), 1 where a
    norm is 0 or the group is excluded; momentum as torch's SGD."""
    groups = [dict(defaults, **g, params=[p for j, p in enumerate(params) if j % 3 == k])
              for k, g in enumerate(groups)]
    buffers = {}
    for step in range(steps):
        set_grads([params], step)
        for group in groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p, wd = p.grad, group["weight_decay"]
                local_lr = 1.0
                if not group.get("lars_exclude", False):
                    weight_norm = torch.norm(p.detach().double()).item()
                    grad_norm = torch.norm(d_p.double()).item()
                    if weight_norm != 0 and grad_norm != 0:
                        local_lr = group["eta"] * weight_norm / (
                            grad_norm + wd * weight_norm + group["eps"])
                d_p = d_p.add(p.detach(), alpha=wd).mul(local_lr * group["lr"])
                if group["momentum"] != 0:
                    if p not in buffers:
                        buffers[p] = d_p.clone()
                    else:
                        buffers[p].mul_(group["momentum"]).add_(d_p, alpha=1 - group["dampening"])
                    d_p = (d_p.add(buffers[p], alpha=group["momentum"]) if group["nesterov"]
                           else buffers[p])
                p.detach().add_(-d_p)
    return {p: {"momentum_buffer": buf} for p, buf in buffers.items()}


def _lamb_loop(params, groups, defaults, steps):
    """timm's Lamb (mmpretrain's type='Lamb'), written out plainly: a global grad-norm clip,
    Adam moments with bias correction, the decay added to the update, and the trust ratio
    |w| / |update| where the group decays or always_adapt."""
    groups = [dict(defaults, **g, params=[p for j, p in enumerate(params) if j % 3 == k])
              for k, g in enumerate(groups)]
    moments = {}
    for step in range(1, steps + 1):
        set_grads([params], step - 1)
        grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
        norm = math.sqrt(sum(g.double().square().sum().item() for g in grads))
        max_norm = defaults["max_grad_norm"]
        clip = max(norm / max_norm, 1.0) if max_norm else 1.0
        for group in groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad / clip
                if p not in moments:
                    moments[p] = [torch.zeros_like(p), torch.zeros_like(p), 0]
                m, v, t = moments[p]
                t = moments[p][2] = t + 1
                wd = group["weight_decay"]
                if not group["adam_w_mode"] and wd != 0:
                    g = g.add(p.detach(), alpha=wd)
                m.mul_(beta1).add_(g, alpha=1 - beta1 if group["grad_averaging"] else 1.0)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                b1, b2 = ((1 - beta1 ** t, 1 - beta2 ** t) if group["bias_correction"]
                          else (1.0, 1.0))
                update = (m / b1) / (v.sqrt() / math.sqrt(b2) + group["eps"])
                if group["adam_w_mode"] and wd != 0:
                    update = update + wd * p.detach()
                if wd != 0 or group["always_adapt"]:
                    w, u = p.detach().norm().item(), update.norm().item()
                    ratio = w / u if w > 0 and u > 0 else 1.0
                    update = update * (min(ratio, 1.0) if group["trust_clip"] else ratio)
                p.detach().add_(update, alpha=-group["lr"])
    return {p: {"exp_avg": m, "exp_avg_sq": v, "step": torch.tensor(float(t))}
            for p, (m, v, t) in moments.items()}


LAMB_DEFAULTS = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                     bias_correction=True, grad_averaging=True, max_grad_norm=1.0,
                     trust_clip=False, always_adapt=False, adam_w_mode=True)
LARS_DEFAULTS = dict(lr=0.1, momentum=0.0, weight_decay=0.0, dampening=0.0, eta=1e-3,
                     nesterov=False, eps=1e-8)


ORACLES = {"FusedLARS": (_lars_loop, LARS_DEFAULTS),
           "FusedLAMB": (_lamb_loop, LAMB_DEFAULTS)}


@pytest.mark.parametrize("name, case", [c for c in NEW_IDS if c[0] in ORACLES],
                         ids=[f"{n}-{i}" for n, i in NEW_IDS if n in ORACLES])
def test_reference_matches_the_plain_loop(name, case):
    """The oracle against the published step written out plainly, in fp64. Neither original
    has ``maximize``. LAMB's global clip of fp64 grads is a float64 norm and coefficient, as
    timm's (Note [norm dtype], fusedopt/backends/__init__.py)."""
    kwargs, groups = NEW_CASES[name][case]
    kwargs = {k: v for k, v in kwargs.items() if k != "maximize"}
    loop, defaults = ORACLES[name]
    base = make_params([(7,), (3, 5), (33, 17), (1,), (12, 10), (5,)], torch.float64)
    ours, theirs = clone_params(base), clone_params(base)
    opt = optimizer_classes()[name](split_groups(ours, groups), backend="reference", **kwargs)
    for step in range(10):
        set_grads([ours], step)
        opt.step()
    states = loop(theirs, groups, dict(defaults, **kwargs), 10)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p, q, f"param {i}")
        for key, value in states.get(q, {}).items():
            assert_close(opt.state[p][key], value, f"param {i} state[{key!r}]")


# ---- every backend against the reference ------------------------------------------------------
def _states(opt, params):
    return [{k: v for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)} for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.float64, False),
                                           (torch.bfloat16, False), (torch.float16, False),
                                           (torch.bfloat16, True)],
                         ids=["fp32", "fp64", "bf16", "fp16", "bf16-master"])
@pytest.mark.parametrize("name, case", NEW_IDS, ids=[f"{n}-{i}" for n, i in NEW_IDS])
def test_backend_matches_reference(name, case, dtype, master, backend):
    """Params and every state over 8 steps with None grads on some steps, three groups, shapes
    0, 1, odd, 2-D, transposed and past one Triton block. Lion is bitwise (the same ops in the
    same order); LARS and LAMB sum their per-tensor norms in another order than the reference,
    so fp32/fp64 agree to the tolerance table, and fp16/bf16, stepped from the same states each
    step, to one ulp of their dtype; fp32 master copies to fp32's tolerance, with each param its
    master's rounding."""
    kwargs, groups = NEW_CASES[name][case]
    kwargs = dict(kwargs, master_weights=master)
    base = make_params(SHAPES, dtype, noncontiguous=(5,))
    ours, theirs = clone_params(base), clone_params(base)
    opt = optimizer_classes()[name](split_groups(ours, groups), backend=backend, **kwargs)
    ref = optimizer_classes()[name](split_groups(theirs, groups), backend="reference", **kwargs)
    exact = name == "FusedLion"
    low = dtype in (torch.float16, torch.bfloat16)
    for step in range(8):
        set_grads([ours, theirs], step)
        if low and not exact:      # one step at a time from the same states
            for p, q in zip(ours, theirs):
                q.detach().copy_(p.detach())
                for key, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value) and key in ref.state.get(q, {}):
                        ref.state[q][key].copy_(value)
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            where = f"step {step} param {i} {tuple(p.shape)}"
            pairs = [("param", p.detach(), q.detach())] + [
                (k, v, _states(ref, [q])[0][k]) for k, v in _states(opt, [p])[0].items()]
            assert _states(opt, [p])[0].keys() == _states(ref, [q])[0].keys(), where
            if master and "master_param" in opt.state.get(p, {}):   # a param with state
                assert torch.equal(p.detach(), opt.state[p]["master_param"].to(dtype)), where
            for key, a, b in pairs:
                if exact:
                    assert torch.equal(a, b), f"{where} {key}: max diff {(a - b).abs().max()}"
                elif low and a.dtype != torch.float32:
                    assert_within_ulp(a, b, f"{where} {key}")
                else:
                    assert_close(a, b, f"{where} {key}")


# ---- the class layer: what every optimizer supports -------------------------------------------
def _model_step(opt, params, step):
    set_grads([params], step, none_every=0)
    opt.step()


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS[:1])
@pytest.mark.parametrize("name", ["FusedLion", "FusedLARS", "FusedLAMB"])
def test_save_load_continue_is_bitwise(name, backend):
    kwargs, groups = NEW_CASES[name][0]
    base = make_params([(7,), (3, 5), (33, 17)])
    a, b = clone_params(base), clone_params(base)
    cls = optimizer_classes()[name]
    first = cls(split_groups(a, groups), backend=backend, **kwargs)
    for step in range(3):
        _model_step(first, a, step)
    saved = copy.deepcopy(first.state_dict())      # what torch.save + torch.load give
    for p, q in zip(a, b):
        q.detach().copy_(p.detach())
    second = cls(split_groups(b, groups), backend=backend, **kwargs)
    second.load_state_dict(saved)
    for step in range(3, 6):
        _model_step(first, a, step)
        _model_step(second, b, step)
    for i, (p, q) in enumerate(zip(a, b)):
        assert torch.equal(p, q), f"param {i}"
        for key, value in first.state[p].items():
            assert torch.equal(value, second.state[q][key]), f"param {i} {key}"


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS[:1])
@pytest.mark.parametrize("name", ["FusedLion", "FusedLARS", "FusedLAMB"])
def test_fused_clip_and_grad_scaler_equal_the_explicit_ones(name, backend):
    """clip_grad_norm_ folded into the step and an AMP scale unscaled inside it give what an
    explicit torch clip of the unscaled grads gives; a found_inf step touches nothing."""
    kwargs, groups = NEW_CASES[name][0]
    # fp32: the clip coefficient is a 0-d float32 tensor (docs/internals.md, "Step semantics")
    base = make_params([(7,), (3, 5), (33, 17)], torch.float32)
    a, b = clone_params(base), clone_params(base)
    cls = optimizer_classes()[name]
    fused = cls(split_groups(a, groups), backend=backend, **kwargs)
    plain = cls(split_groups(b, groups), backend="reference", **kwargs)
    scale = torch.tensor(1024.0)
    for step in range(4):
        set_grads([a, b], step, none_every=0)
        for p in a:
            p.grad.mul_(1024.0)
        fused.clip_grad_norm_(0.5, grad_scale=scale)
        fused.grad_scale, fused.found_inf = scale, torch.zeros(())
        fused.step()
        torch.nn.utils.clip_grad_norm_(b, 0.5)
        plain.step()
    for i, (p, q) in enumerate(zip(a, b)):
        assert_close(p, q, f"param {i}")
    before = [p.detach().clone() for p in a]
    set_grads([a], 9, none_every=0)
    fused.found_inf = torch.ones(())
    fused.step()
    assert all(torch.equal(p, q) for p, q in zip(a, before))


def test_lars_exclude_comes_from_paramwise_custom_keys():
    """mmpretrain's SimCLR-style config: norms and biases excluded from LARS adaptation."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    wrapper = fusedopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="LARS", lr=0.3, momentum=0.9, weight_decay=1e-6),
        paramwise_cfg=dict(custom_keys={"bias": dict(decay_mult=0, lars_exclude=True),
                                        "1.": dict(decay_mult=0, lars_exclude=True)})))
    opt = wrapper.optimizer
    assert isinstance(opt, fusedopt.FusedLARS)
    excluded = {id(p) for g in opt.param_groups if g["lars_exclude"] for p in g["params"]}
    assert excluded == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    table = opt.hparam_tables[torch.device("cpu")]
    column = fusedopt.FusedLARS.ALGORITHM.column_names.index("exclude")
    assert table[:, column].tolist() == [float(g["lars_exclude"]) for g in opt.param_groups]


def test_lamb_global_clip_folds_into_the_step_without_a_host_read():
    """max_grad_norm clips by the norm of every grad of the optimizer, computed on the device:
    a step of grads 10x larger than the limit equals a step of grads scaled to the limit."""
    base = make_params([(7,), (3, 5)], torch.float64)
    a, b = clone_params(base), clone_params(base)
    big = fusedopt.FusedLAMB(a, lr=1e-2, max_grad_norm=1.0, backend="reference")
    unit = fusedopt.FusedLAMB(b, lr=1e-2, max_grad_norm=None, backend="reference")
    set_grads([a, b], 0, none_every=0)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in a]))
    for p, q in zip(a, b):
        p.grad.mul_(10 / total)
        q.grad.mul_(1 / total)
    big.step()
    unit.step()
    for i, (p, q) in enumerate(zip(a, b)):
        assert_close(p, q, f"param {i}")


def test_new_classes_reject_bad_values_before_touching_anything():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="learning rate"):
        fusedopt.FusedLion([p], lr=-1.0)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        fusedopt.FusedLAMB([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="max_grad_norm"):
        fusedopt.FusedLAMB([p], max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        fusedopt.FusedLARS([p], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="lars_exclude"):
        fusedopt.FusedLARS([{"params": [p], "lars_exclude": "yes"}], lr=0.1)
    assert torch.equal(p, torch.ones(3))
