"""Differential tests against mmengine (a test extra): same model + config built by both."""
import copy

import pytest
import torch
from torch import nn

mmengine = pytest.importorskip("mmengine")

import fusedopt  # noqa: E402
import fusedopt.mmengine as fo_mm  # noqa: E402
from mmengine.optim import build_optim_wrapper as mm_build  # noqa: E402
from mmengine.optim import CosineAnnealingLR, LinearLR  # noqa: E402
from mmengine.optim import OptimWrapper as MMOptimWrapper  # noqa: E402
from mmengine.optim import AmpOptimWrapper as MMAmpOptimWrapper  # noqa: E402

fo_build = fusedopt.build_optim_wrapper


class Net(nn.Module):
    def __init__(self, seed=0):
        torch.manual_seed(seed)
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.layer0 = nn.Conv2d(3, 8, 3, padding=1)
        self.backbone.act = nn.Tanh()       # a bias right before BN has a pure round-off grad
        self.backbone.bn = nn.BatchNorm2d(8)
        self.backbone.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.backbone.layer1 = nn.Conv2d(8, 8, 1, bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, 4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        x = torch.relu(self.backbone(x))
        x = self.gn(x).mean((2, 3)) * self.scale
        return self.head(self.ln(x))


PARAMWISE = [
    None,
    dict(norm_decay_mult=0.),
    dict(bias_lr_mult=2., bias_decay_mult=0.5, norm_decay_mult=0., dwconv_decay_mult=0.1,
         flat_decay_mult=0.3),
    dict(custom_keys={"backbone.layer0": dict(lr_mult=0, decay_mult=0),
                      "backbone": dict(lr_mult=1), "head": dict(lr_mult=0.1)}),
    dict(custom_keys={"bn": dict(lr_mult=3., decay_mult=0.), "head.bias": dict(lr_mult=0.5)},
         bias_lr_mult=2., norm_decay_mult=0.1, bypass_duplicate=True),
]


def named_groups(model, ow):
    names = {id(p): n for n, p in model.named_parameters()}
    return [({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]])
            for g in ow.optimizer.param_groups]


@pytest.mark.parametrize("pw", PARAMWISE)
@pytest.mark.parametrize("opt", [dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-3),
                                 dict(type="AdamW", lr=1e-3, weight_decay=1e-2)])
def test_same_groups(pw, opt):
    cfg = dict(type="OptimWrapper", optimizer=opt)
    if pw is not None:
        cfg["paramwise_cfg"] = pw
    m = Net()
    a = mm_build(m, copy.deepcopy(cfg))
    b = fo_build(m, copy.deepcopy(cfg))
    assert named_groups(m, a) == named_groups(m, b)
    assert a.get_lr() == b.get_lr() and a.get_momentum() == b.get_momentum()
    # the fusedopt optimizer gets the very same groups
    fcfg = copy.deepcopy(cfg)
    fcfg["optimizer"]["type"] = "Fused" + opt["type"]
    c = fo_build(m, fcfg)
    assert [g[1] for g in named_groups(m, c)] == [g[1] for g in named_groups(m, a)]
    assert c.get_lr() == a.get_lr()


def _train(model, ow, sched, iters, x, y, lrs):
    ow.initialize_count_status(model, 0, iters)
    for i in range(iters):
        with ow.optim_context(model):
            loss = nn.functional.cross_entropy(model(x[i % 4]), y[i % 4])
        ow.update_params(loss)
        for s in sched:
            s.step()
        lrs.append([g["lr"] for g in ow.optimizer.param_groups])


@pytest.mark.parametrize("mm_type,fo_type,kw", [
    ("fusedopt.FusedAdamW", "FusedAdamW", dict(lr=3e-3, weight_decay=1e-2)),
    ("AdamW", "FusedAdamW", dict(lr=3e-3, weight_decay=1e-2)),
    ("SGD", "FusedSGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
])
def test_same_trajectory_with_clip_accumulation_schedulers(mm_type, fo_type, kw):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (4, 6), generator=g)
    base = dict(type="OptimWrapper", accumulative_counts=3, clip_grad=dict(max_norm=0.5),
                paramwise_cfg=dict(bias_lr_mult=2., norm_decay_mult=0.,
                                   custom_keys={"head": dict(lr_mult=0.5)}))
    m1, m2 = Net(), Net()
    a = mm_build(m1, dict(copy.deepcopy(base), optimizer=dict(type=mm_type, **kw)))
    b = fo_build(m2, dict(copy.deepcopy(base), optimizer=dict(type=fo_type, **kw)))
    assert type(a) is MMOptimWrapper and type(b) is fusedopt.OptimWrapper

    def scheds(ow):     # mmengine's schedulers drive both (iteration based)
        return [LinearLR(ow, start_factor=0.1, by_epoch=False, begin=0, end=4),
                CosineAnnealingLR(ow, T_max=10, by_epoch=False, begin=4, end=14)]
    # ours is not an mmengine BaseOptimWrapper: give the schedulers its optimizer
    lr_a, lr_b = [], []
    _train(m1, a, scheds(a), 14, x, y, lr_a)
    _train(m2, b, scheds(b.optimizer), 14, x, y, lr_b)
    assert lr_a == lr_b
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=2e-5, atol=2e-6, msg=lambda m: f"{n}: {m}")
    assert float(b.last_grad_norm) == pytest.approx(
        a.message_hub.get_scalar("train/grad_norm").current(), rel=1e-5)


def test_adapter_registries_and_scope():
    from mmengine.registry import DefaultScope
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MM_C
    from mmengine.registry import OPTIM_WRAPPERS as MM_W
    from mmengine.registry import OPTIMIZERS as MM_O
    # root registries untouched
    assert "FusedAdam" not in MM_O.module_dict and "FusedSGD" not in MM_O.module_dict
    assert MM_W.module_dict["OptimWrapper"] is MMOptimWrapper
    assert MM_O.children["fusedopt"] is fo_mm.OPTIMIZERS
    assert MM_O.get("fusedopt.FusedAdam") is fusedopt.FusedAdam
    assert MM_C.get("fusedopt.DefaultOptimWrapperConstructor") is fo_mm.DefaultOptimWrapperConstructor
    m = Net()
    ow = mm_build(m, dict(type="fusedopt.OptimWrapper",
                          optimizer=dict(type="fusedopt.FusedAdam", lr=1e-3)))
    assert isinstance(ow, MMOptimWrapper) and isinstance(ow, fusedopt.OptimWrapper)
    amp = MM_W.build(dict(type="fusedopt.AmpOptimWrapper", dtype="bfloat16",
                          optimizer=fusedopt.FusedAdam(m.parameters())))
    assert isinstance(amp, MMAmpOptimWrapper)
    # default_scope='fusedopt': plain names resolve to fusedopt's first, then mmengine's
    with DefaultScope.overwrite_default_scope("fusedopt"):
        ow = mm_build(m, dict(optimizer=dict(type="FusedSGD", lr=0.1, weight_decay=1e-4),
                              paramwise_cfg=dict(norm_decay_mult=0.)))
        assert type(ow) is fo_mm.OptimWrapper and isinstance(ow.optimizer, fusedopt.FusedSGD)
        ow = mm_build(m, dict(optimizer=dict(type="Adagrad", lr=0.1)))
        assert isinstance(ow.optimizer, torch.optim.Adagrad)


def _exc(fn):
    try:
        fn()
    except Exception as e:       # noqa: BLE001
        return e
    raise AssertionError("no exception")


@pytest.mark.parametrize("cfg", [
    dict(optimizer=dict(type="SGD", lr=0.1), paramwise_cfg=[1]),
    dict(optimizer=dict(type="SGD", lr=0.1), paramwise_cfg=dict(custom_keys=[1])),
    dict(optimizer=dict(type="SGD", lr=0.1), paramwise_cfg=dict(norm_decay_mult=0.)),
    dict(optimizer=dict(type="SGD", lr=0.1),
         paramwise_cfg=dict(custom_keys={"head": dict(decay_mult=0.)})),
    dict(optimizer=dict(type="SGD", lr=0.1), accumulative_counts=0),
    dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(type="l3", max_norm=1)),
    dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=dict()),
    dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(type="norm")),
    dict(optimizer=dict(type="NoSuchOpt", lr=0.1)),
    dict(type="NoSuchWrapper", optimizer=dict(type="SGD", lr=0.1)),
    dict(constructor="NoSuchConstructor", optimizer=dict(type="SGD", lr=0.1)),
])
def test_same_exception_types_as_mmengine(cfg):
    e_mm = _exc(lambda: mm_build(Net(), copy.deepcopy(cfg)))
    e_fo = _exc(lambda: fo_build(Net(), copy.deepcopy(cfg)))
    assert isinstance(e_fo, type(e_mm)), (e_mm, e_fo)


def test_same_lrs_with_fusedopt_schedulers():
    """mmengine wrapper + mmengine schedulers vs fusedopt wrapper + fusedopt schedulers, from
    the same configs: lrs and momenta equal every iteration, params after training close."""
    from mmengine.registry import PARAM_SCHEDULERS as MM_S
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (4, 6), generator=g)
    epoch_length, epochs = 4, 4
    sched_cfg = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=5),
        dict(type="MultiStepLR", by_epoch=True, milestones=[2, 3], gamma=0.5),
        dict(type="CosineAnnealingMomentum", by_epoch=True, begin=0, T_max=4, eta_min=0.5,
             convert_to_iter_based=True),
    ]
    base = dict(type="OptimWrapper", clip_grad=dict(max_norm=1.0), accumulative_counts=2,
                paramwise_cfg=dict(bias_lr_mult=2., norm_decay_mult=0.),
                optimizer=dict(lr=0.05, momentum=0.9, weight_decay=1e-3))
    m1, m2 = Net(), Net()
    cfg_a = copy.deepcopy(base)
    cfg_a["optimizer"]["type"] = "SGD"
    cfg_b = copy.deepcopy(base)
    cfg_b["optimizer"]["type"] = "FusedSGD"
    a, b = mm_build(m1, cfg_a), fo_build(m2, cfg_b)

    def mm_scheds(ow):
        out = []
        for c in copy.deepcopy(sched_cfg):
            conv = c.pop("convert_to_iter_based", False)
            cls = MM_S.get(c.pop("type"))
            out.append(cls.build_iter_from_epoch(ow, epoch_length=epoch_length, **c) if conv
                       else cls(ow, **c))
        return out
    sa = mm_scheds(a)
    sb = fusedopt.build_param_scheduler(b, copy.deepcopy(sched_cfg), epoch_length=epoch_length)
    total = epochs * epoch_length
    for ow, m in ((a, m1), (b, m2)):
        ow.initialize_count_status(m, 0, total)
    seen_a, seen_b = [], []
    for e in range(epochs):
        for i in range(epoch_length):
            for ow, m, seen in ((a, m1, seen_a), (b, m2, seen_b)):
                seen.append((ow.get_lr(), ow.get_momentum()))
                loss = nn.functional.cross_entropy(m(x[i]), y[i])
                ow.update_params(loss)
            for s in sa + sb:
                if not s.by_epoch:
                    s.step()
        for s in sa + sb:
            if s.by_epoch:
                s.step()
    for (la, ma), (lb, mb) in zip(seen_a, seen_b):
        assert la["lr"] == pytest.approx(lb["lr"], rel=1e-12, abs=1e-15)
        assert la["base_lr"] == pytest.approx(lb["base_lr"], rel=1e-12)
        assert ma["momentum"] == pytest.approx(mb["momentum"], rel=1e-12)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=2e-5, atol=2e-6, msg=lambda s: f"{n}: {s}")
