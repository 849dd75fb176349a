"""One test per snippet of the user's tutorial (shared/seeds/000_5ab143595e4a87a9.txt), with
fusedopt optimizer types wherever the snippet names an optimizer."""
import copy

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

import fusedopt
from fusedopt import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS, DefaultOptimWrapperConstructor,
                      build_optim_wrapper)


class Recognizer(nn.Module):
    """MMAction2-shaped toy: backbone (with layer0 and BN), head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Module()
        self.backbone.layer0 = nn.Conv2d(3, 4, 3, padding=1)
        self.backbone.bn = nn.BatchNorm2d(4)
        self.backbone.layer1 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        b = self.backbone
        x = b.layer1(torch.relu(b.bn(torch.relu(b.layer0(x)))))
        return self.head(x.mean((2, 3)))


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def train(model, ow, iters=3, x=None, y=None):
    if x is None:
        x, y = batch()
    for _ in range(iters):
        with ow.optim_context(model):
            loss = nn.functional.cross_entropy(model(x), y)
        ow.update_params(loss)
    return loss


def by_name(model, ow):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g["params"][0])]: g for g in ow.optimizer.param_groups}


@pytest.fixture
def clean_registries():
    """Snippets register classes in the global registries: take them out afterwards."""
    before = {r: dict(r._module_dict) for r in (OPTIMIZERS, OPTIM_WRAPPER_CONSTRUCTORS)}
    yield
    for r, d in before.items():
        r._module_dict.clear()
        r._module_dict.update(d)


# "Build optimizers using optim_wrapper"
def test_simple_optim_wrapper():
    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='FusedSGD', lr=0.0003, weight_decay=0.0001)
    )
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    assert isinstance(ow, fusedopt.OptimWrapper) and isinstance(ow.optimizer, fusedopt.FusedSGD)
    g = ow.optimizer.param_groups[0]
    assert (g["lr"], g["weight_decay"]) == (0.0003, 0.0001)
    train(m, ow)


# "Use optimizers supported by PyTorch" (Adam; fusedopt's drop-in FusedAdam)
@pytest.mark.parametrize("opt_type", ["Adam", "FusedAdam"])
def test_adam_config_equals_torch_adam(opt_type):
    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(
            type=opt_type,
            lr=0.001,
            betas=(0.9, 0.999),
            eps=1e-08,
            weight_decay=0,
            amsgrad=False),
    )
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    # "The above config will build the following optimizer": torch.optim.Adam(...)
    ref = torch.optim.Adam(Recognizer().parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-08,
                           weight_decay=0, amsgrad=False)
    for k in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert ow.optimizer.defaults[k] == ref.defaults[k]
    m_ref = Recognizer()
    ref = torch.optim.Adam(m_ref.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-08)
    x, y = batch()
    train(m, ow, 3, x, y)
    for _ in range(3):
        nn.functional.cross_entropy(m_ref(x), y).backward()
        ref.step()
        ref.zero_grad()
    for a, b in zip(m.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# "Parameter-wise finely configuration": norm_decay_mult
def test_norm_decay_mult():
    optim_wrapper = dict(
        optimizer=dict(type='FusedSGD', lr=0.8, weight_decay=1e-4),
        paramwise_cfg=dict(norm_decay_mult=0.))
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    g = by_name(m, ow)
    assert g["backbone.bn.weight"]["weight_decay"] == 0 and g["backbone.bn.bias"]["weight_decay"] == 0
    assert g["backbone.layer0.weight"]["weight_decay"] == 1e-4
    assert all(gr["lr"] == 0.8 for gr in g.values())
    train(m, ow)


# the list of multipliers under "Set different hyper-parameter multipliers"
def test_listed_multipliers():
    m = Recognizer()
    ow = build_optim_wrapper(m, dict(
        optimizer=dict(type='FusedAdamW', lr=0.01, weight_decay=0.05),
        paramwise_cfg=dict(lr_mult=0.5, decay_mult=2.0, bias_lr_mult=2.0, bias_decay_mult=0.,
                           norm_decay_mult=0., dwconv_decay_mult=1.0, bypass_duplicate=True,
                           dcn_offset_lr_mult=0.1)))
    g = by_name(m, ow)
    assert g["head.weight"]["lr"] == pytest.approx(0.005)
    assert g["head.weight"]["weight_decay"] == pytest.approx(0.1)
    assert g["head.bias"]["lr"] == pytest.approx(0.01)
    assert g["head.bias"]["weight_decay"] == 0
    assert g["backbone.bn.weight"]["weight_decay"] == 0
    train(m, ow)


# "Set different hyper-parameter multipliers for specific parameters": custom_keys
def test_custom_keys():
    optim_wrapper = dict(
        optimizer=dict(type='FusedSGD', lr=0.01, weight_decay=0.0001),
        paramwise_cfg=dict(
            custom_keys={
                'backbone.layer0': dict(lr_mult=0, decay_mult=0),
                'backbone': dict(lr_mult=1),
                'head': dict(lr_mult=0.1)
            }))
    m = Recognizer()
    before = m.backbone.layer0.weight.detach().clone()
    ow = build_optim_wrapper(m, optim_wrapper)
    g = by_name(m, ow)
    assert g["backbone.layer0.weight"]["lr"] == 0 and g["backbone.layer0.weight"]["weight_decay"] == 0
    assert g["backbone.layer1.weight"]["lr"] == 0.01
    assert g["backbone.layer1.weight"]["weight_decay"] == 0.0001
    assert g["head.weight"]["lr"] == pytest.approx(0.001)
    train(m, ow)
    assert torch.equal(m.backbone.layer0.weight, before)     # lr 0: frozen in effect


# "Gradient clipping"
def test_gradient_clipping():
    optim_wrapper = dict(
        optimizer=dict(type='FusedSGD', lr=0.01, weight_decay=0.0001),
        # norm_type: type of the used p-norm, here norm_type is 2.
        clip_grad=dict(max_norm=35, norm_type=2))
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    m_ref = Recognizer()
    ref = torch.optim.SGD(m_ref.parameters(), lr=0.01, weight_decay=0.0001)
    x, y = batch()
    for _ in range(3):
        with ow.optim_context(m):
            loss = nn.functional.cross_entropy(m(x), y) * 1e3    # big grads: clip active
        ow.update_params(loss)
        (nn.functional.cross_entropy(m_ref(x), y) * 1e3).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(m_ref.parameters(), 35, 2)
        ref.step()
        ref.zero_grad()
        torch.testing.assert_close(ow.last_grad_norm, ref_norm)
    assert float(ow.last_grad_norm) > 35
    for a, b in zip(m.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# "Gradient accumulation": batch 64 x 4 accumulations == batch 256 (scaled down 8x here)
def test_gradient_accumulation_equivalence():
    acc_cfg = dict(
        optimizer=dict(type='FusedSGD', lr=0.01, weight_decay=0.0001),
        accumulative_counts=4)
    big_cfg = dict(
        optimizer=dict(type='FusedSGD', lr=0.01, weight_decay=0.0001))
    x, y = batch(32)
    m1, m2 = nn.Sequential(nn.Flatten(), nn.Linear(108, 5)), None
    m2 = copy.deepcopy(m1)
    acc, big = build_optim_wrapper(m1, acc_cfg), build_optim_wrapper(m2, big_cfg)
    for _ in range(2):
        for xs, ys in zip(x.chunk(4), y.chunk(4)):          # train_dataloader batch_size=8
            acc.update_params(nn.functional.cross_entropy(m1(xs), ys))
        big.update_params(nn.functional.cross_entropy(m2(x), y))   # batch_size=32
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- "Customize parameter schedules" -----------------------------------------------------------
def _lrs_over(cfg, epochs, epoch_length, optimizer_cfg=None):
    m = Recognizer()
    ow = build_optim_wrapper(m, dict(optimizer=optimizer_cfg or dict(type='FusedSGD', lr=0.1,
                                                                      momentum=0.9)))
    scheds = fusedopt.build_param_scheduler(ow, cfg, epoch_length=epoch_length)
    lrs, moms = [], []
    for _ in range(epochs):
        for _ in range(epoch_length):
            lrs.append(ow.get_lr()["lr"][0])
            moms.append(ow.get_momentum()["momentum"][0])
            for s in scheds:
                if not s.by_epoch:
                    s.step()
        for s in scheds:
            if s.by_epoch:
                s.step()
    return lrs, moms


def test_single_multisteplr():
    param_scheduler = dict(
        type='MultiStepLR',
        by_epoch=True,
        milestones=[100, 150],
        gamma=0.1)
    cfg = dict(param_scheduler, milestones=[2, 3])     # 100/150 epochs scaled down
    lrs, _ = _lrs_over(cfg, 4, 1)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert fusedopt.build_param_scheduler(
        build_optim_wrapper(Recognizer(), dict(optimizer=dict(type='FusedSGD', lr=0.1))),
        param_scheduler)[0].milestones


def test_single_cosine():
    num_epochs = 4
    param_scheduler = dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        T_max=num_epochs)
    lrs, _ = _lrs_over(param_scheduler, num_epochs, 1)
    import math
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_warmup_linear_then_multistep():
    param_scheduler = [
        # linear warm-up by iters
        dict(type='LinearLR',
             start_factor=0.001,
             by_epoch=False,  # by iters
             end=50),  # only warm up for first 50 iters
        # main learing rate schedule
        dict(type='MultiStepLR',
             by_epoch=True,
             milestones=[8, 11],
             gamma=0.1)
    ]
    lrs, _ = _lrs_over(param_scheduler, 12, 10)
    assert lrs[0] == pytest.approx(0.1 * 0.001)
    assert lrs[50] == pytest.approx(0.1)
    assert lrs[80] == pytest.approx(0.01) and lrs[110] == pytest.approx(0.001)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:50], lrs[1:51]))


def test_warmup_epochs_converted_to_iters_then_cosine():
    param_scheduler = [
        # linear warm-up by epochs in [0, 10) epochs
        dict(type='LinearLR',
             start_factor=0.001,
             by_epoch=True,
             end=10,
             convert_to_iter_based=True,  # Update learning rate by iter.
             ),
        # use CosineAnnealing schedule after 10 epochs
        dict(type='CosineAnnealingLR', by_epoch=True, begin=10, end=20, T_max=10)
    ]
    lrs, _ = _lrs_over(param_scheduler, 20, 3)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[1] > lrs[0]                               # changes every iteration
    assert lrs[30] == pytest.approx(0.1)
    assert lrs[-1] < 0.01


def test_momentum_schedule():
    param_scheduler = [
        # the lr scheduler
        dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=10),
        # the momentum scheduler
        dict(type='LinearMomentum',
             start_factor=0.001,
             by_epoch=False,
             begin=0,
             end=1000)
    ]
    lrs, moms = _lrs_over(param_scheduler, 1, 20, dict(type='FusedAdamW', lr=0.1))
    assert moms[0] == pytest.approx(0.9 * 0.001)
    assert moms[10] > moms[0] and lrs[10] == pytest.approx(0.1)


# ---- "Add new optimizers" ----------------------------------------------------------------------
def test_add_new_optimizer(clean_registries):
    @OPTIMIZERS.register_module()
    class MyOptimizer(Optimizer):

        def __init__(self, a, b, c):
            # mmengine passes the params as the first argument: `a`
            super().__init__(a, dict(lr=b, momentum=c))

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"])

    a_value, b_value, c_value = None, 0.1, 0.0
    optim_wrapper = dict(
        optimizer=dict(type='MyOptimizer', a=a_value, b=b_value, c=c_value))
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    assert type(ow.optimizer).__name__ == "MyOptimizer"
    before = [p.detach().clone() for p in m.parameters()]
    train(m, ow, 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_add_new_fused_optimizer(clean_registries):
    # the same recipe with a fusedopt optimizer underneath
    @OPTIMIZERS.register_module()
    class MyFusedOptimizer(fusedopt.FusedSGD):
        def __init__(self, a, b, c):
            super().__init__(a, lr=b, momentum=c)

    m = Recognizer()
    ow = build_optim_wrapper(m, dict(optimizer=dict(type='MyFusedOptimizer', a=None, b=0.1, c=0.9),
                                     clip_grad=dict(max_norm=1.0)))
    train(m, ow, 2)
    assert isinstance(ow.last_grad_norm, torch.Tensor)


# ---- "Add new optimizer constructors" ----------------------------------------------------------
def test_add_new_constructor(clean_registries):
    @OPTIM_WRAPPER_CONSTRUCTORS.register_module()
    class MyOptimWrapperConstructor:

        def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
            self.optim_wrapper_cfg = optim_wrapper_cfg
            self.paramwise_cfg = paramwise_cfg

        def __call__(self, model):
            # e.g. no weight decay for every BatchNorm, then the default rules
            paramwise = dict(self.paramwise_cfg or {}, norm_decay_mult=0.)
            return DefaultOptimWrapperConstructor(self.optim_wrapper_cfg, paramwise)(model)

    optim_wrapper = dict(
        constructor=dict(type='MyOptimWrapperConstructor'),
        optimizer=dict(type='FusedAdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=0.1)}),
    )
    m = Recognizer()
    ow = build_optim_wrapper(m, optim_wrapper)
    g = by_name(m, ow)
    assert g["backbone.bn.weight"]["weight_decay"] == 0
    assert g["head.weight"]["lr"] == pytest.approx(1e-4)
    train(m, ow)
    # the string form works too
    optim_wrapper["constructor"] = 'MyOptimWrapperConstructor'
    assert len(build_optim_wrapper(m, optim_wrapper).optimizer.param_groups) == len(g)
