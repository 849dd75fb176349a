"""DefaultOptimWrapperConstructor / build_optim_wrapper: the paramwise rules and bad input."""
import logging

import pytest
import torch
from torch import nn

import fusedopt
from fusedopt import DefaultOptimWrapperConstructor, build_optim_wrapper
from fusedopt.config import OPTIM_WRAPPER_CONSTRUCTORS


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.layer0 = nn.Conv2d(3, 4, 3, bias=True)
        self.backbone.bn = nn.BatchNorm2d(4)
        self.backbone.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.backbone.layer1 = nn.Conv2d(4, 4, 1)
        self.neck_ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(4))   # flat param outside any layer
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        x = self.backbone.layer1(self.backbone.dw(self.backbone.bn(self.backbone.layer0(x))))
        x = self.gn(x).mean((2, 3)) * self.scale
        return self.head(self.neck_ln(x))


def groups_by_name(model, ow):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in ow.optimizer.param_groups:
        assert len(g["params"]) == 1
        out[names[id(g["params"][0])]] = g
    return out


def build(model, **kw):
    cfg = dict(optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9, weight_decay=1e-2))
    cfg.update(kw)
    return build_optim_wrapper(model, cfg)


def test_no_paramwise_cfg_one_group_with_all_params():
    m = Net()
    ow = build(m)
    assert isinstance(ow, fusedopt.OptimWrapper)
    assert isinstance(ow.optimizer, fusedopt.FusedSGD)
    assert len(ow.optimizer.param_groups) == 1
    # like mmengine: model.parameters(), frozen ones included
    assert len(ow.optimizer.param_groups[0]["params"]) == len(list(m.parameters()))


def test_one_group_per_param_and_frozen_skipped():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(bias_lr_mult=2.0)))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert sorted(g) == sorted(trainable)
    assert "frozen.weight" not in g


def test_multipliers():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(
        bias_lr_mult=2.0, bias_decay_mult=0.5, norm_decay_mult=0.0, dwconv_decay_mult=0.25,
        flat_decay_mult=0.1)))
    lr, wd = 0.1, 1e-2
    assert g["backbone.layer0.bias"]["lr"] == lr * 2.0
    assert g["backbone.layer0.bias"]["weight_decay"] == wd * 0.5
    assert "lr" not in g["backbone.layer0.weight"] or g["backbone.layer0.weight"]["lr"] == lr
    # norm layers: decay from norm_decay_mult, bias lr untouched by bias_lr_mult
    for n in ("backbone.bn.weight", "backbone.bn.bias", "neck_ln.weight", "gn.bias"):
        assert g[n]["weight_decay"] == 0.0
    assert g["backbone.bn.bias"]["lr"] == lr
    # depthwise conv: weight gets dwconv_decay_mult; its bias hits bias_decay_mult first
    assert g["backbone.dw.weight"]["weight_decay"] == wd * 0.25
    assert g["backbone.dw.bias"]["weight_decay"] == wd * 0.5
    # 1-d param outside norm layers: flat_decay_mult
    assert g["scale"]["weight_decay"] == pytest.approx(wd * 0.1)
    assert g["head.weight"]["weight_decay"] == wd


def test_custom_keys_longest_match_wins_and_takes_precedence():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(
        bias_lr_mult=10.0, norm_decay_mult=0.0,
        custom_keys={"backbone.layer0": dict(lr_mult=0, decay_mult=0),
                     "backbone": dict(lr_mult=1), "head": dict(lr_mult=0.1)})))
    assert g["backbone.layer0.weight"]["lr"] == 0 and g["backbone.layer0.weight"]["weight_decay"] == 0
    assert g["backbone.layer0.bias"]["lr"] == 0          # not bias_lr_mult
    assert g["backbone.bn.weight"]["lr"] == 0.1
    assert g["backbone.bn.weight"]["weight_decay"] == 1e-2   # custom key beats norm_decay_mult
    assert g["head.bias"]["lr"] == pytest.approx(0.01)
    assert g["head.bias"]["lr_mult"] == 0.1                  # mmengine copies the key's dict
    assert g["neck_ln.bias"]["weight_decay"] == 0.0          # unmatched: normal rules


def test_custom_keys_equal_length_alphabetical():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(
        custom_keys={"layer0.w": dict(lr_mult=3.0), "backbone": dict(lr_mult=5.0),
                     "ayer0.we": dict(lr_mult=7.0)})))
    # 'ayer0.we' (8 chars) beats 'backbone' (8 chars) alphabetically; 'layer0.w' is 8 too
    assert g["backbone.layer0.weight"]["lr"] == pytest.approx(0.1 * 7.0)


def test_global_lr_mult_and_decay_mult():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(lr_mult=0.5, decay_mult=2.0,
                                                      bias_lr_mult=2.0)))
    assert g["head.weight"]["lr"] == pytest.approx(0.05)
    assert g["head.weight"]["weight_decay"] == pytest.approx(2e-2)
    assert g["head.bias"]["lr"] == pytest.approx(0.1)       # 0.1 * 0.5 * 2


def test_bypass_duplicate():
    m = Net()
    m.head2 = nn.Linear(4, 3)
    m.head2.weight = m.head.weight          # shared parameter (tied weights)
    with pytest.raises(ValueError):
        build(m, paramwise_cfg=dict(bias_lr_mult=1.0))
    ow = build(m, paramwise_cfg=dict(bypass_duplicate=True))
    ids = [id(g["params"][0]) for g in ow.optimizer.param_groups]
    assert len(ids) == len(set(ids))


def test_model_module_is_unwrapped():
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    m = Net()
    g = groups_by_name(m, build(Wrapper(m), paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=2.)})))
    assert g["head.weight"]["lr"] == pytest.approx(0.2)       # 'head', not 'module.head'


def test_constructor_name_dict_and_class():
    m = Net()
    for c in ("DefaultOptimWrapperConstructor", dict(type="DefaultOptimWrapperConstructor"),
              DefaultOptimWrapperConstructor):
        ow = build(m, constructor=c, paramwise_cfg=dict(bias_lr_mult=2.0))
        assert len(ow.optimizer.param_groups) > 1


def test_dcn_offset_lr_mult_without_mmcv():
    # a class named like mmcv's DCN, from an 'mmcv' module: recognised without importing mmcv
    DCN = type("DeformConv2d", (nn.Module,), {"__module__": "mmcv.ops.deform_conv"})

    def init(self):
        nn.Module.__init__(self)
        self.weight = nn.Parameter(torch.ones(2, 2, 3, 3))
        self.conv_offset = nn.Conv2d(2, 18, 3)
    DCN.__init__ = init
    m = nn.Module()
    m.dcn = DCN()
    m.fc = nn.Linear(2, 2)
    g = groups_by_name(m, build(m, paramwise_cfg=dict(dcn_offset_lr_mult=0.1, bias_lr_mult=3.0)))
    assert g["dcn.conv_offset.weight"]["lr"] == pytest.approx(0.01)
    assert g["dcn.conv_offset.bias"]["lr"] == pytest.approx(0.01)
    assert g["fc.bias"]["lr"] == pytest.approx(0.3)


def test_cfg_not_mutated():
    m = Net()
    cfg = dict(optimizer=dict(type="FusedAdamW", lr=1e-3), clip_grad=dict(type="norm", max_norm=1),
               paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=0.1)}))
    import copy
    before = copy.deepcopy(cfg)
    build_optim_wrapper(m, cfg)
    assert cfg == before



# ---- custom_keys entries: every key passes into the group (Note [custom_keys entries]) ------------
def test_custom_keys_entry_keys_pass_into_the_group():
    m = Net()
    g = groups_by_name(m, build(m, paramwise_cfg=dict(custom_keys={
        "bn": dict(decay_mult=0, lars_exclude=True), "head": dict(fix_lr=True, tag="x"),
        "layer1": dict(momentum=0.5, lr_mult=2.0)})))
    assert g["backbone.bn.weight"]["lars_exclude"] is True
    assert g["backbone.bn.weight"]["weight_decay"] == 0
    assert g["head.bias"]["fix_lr"] is True and g["head.bias"]["tag"] == "x"
    assert g["backbone.layer1.weight"]["momentum"] == 0.5
    assert g["backbone.layer1.weight"]["lr"] == pytest.approx(0.2)
    assert "fix_lr" not in g["backbone.layer0.weight"]


@pytest.mark.parametrize("opt_type", ["SGD", "FusedSGD"])
def test_group_keys_the_optimizer_does_not_read_are_kept(opt_type):
    """torch.optim keeps unknown group keys (add_param_group fills defaults around them), in
    param_groups and in the state_dict; so do fusedopt's optimizers. The steps are those of the
    same groups without the keys."""
    def run(extra):
        torch.manual_seed(0)
        m = nn.Linear(3, 2)
        cfg = dict(optimizer=dict(type=opt_type, lr=0.1, momentum=0.9, weight_decay=1e-2),
                   paramwise_cfg=dict(custom_keys={"bias": dict(decay_mult=0, **extra)}))
        ow = build_optim_wrapper(m, cfg)
        for _ in range(3):
            ow.update_params(m(torch.ones(4, 3)).square().sum())
        return m, ow
    (m0, _), (m1, ow) = run({}), run(dict(fix_lr=True, lars_exclude=True))
    torch.testing.assert_close(m1.bias, m0.bias, rtol=0, atol=0)
    torch.testing.assert_close(m1.weight, m0.weight, rtol=0, atol=0)
    sd = ow.optimizer.state_dict()
    bias_group = next(g for g in sd["param_groups"] if g.get("fix_lr"))
    assert bias_group["lars_exclude"] is True
    twin = nn.Linear(3, 2)          # torch's SGD takes the state_dict, keys and all
    torch_opt = torch.optim.SGD([{"params": [twin.weight]}, {"params": [twin.bias]}], lr=0.1,
                                momentum=0.9)
    torch_opt.load_state_dict(sd)
    assert torch_opt.param_groups[1]["fix_lr"] is True
    assert torch_opt.param_groups[1]["lars_exclude"] is True


@pytest.mark.parametrize("entry,match", [
    (dict(lr_mul=0.0), r"'lr_mul' \(did you mean 'lr_mult'\?\)"),
    (dict(decay_mul=0.0, fix_lr=True), r"'decay_mul' \(did you mean 'decay_mult'\?\)"),
    (dict(lrmult=0.1), r"'lrmult' \(did you mean 'lr_mult'\?\)"),
    (dict(norm_decay_mult=0.0), r"'norm_decay_mult' \(a top-level paramwise_cfg key\)"),
    (dict(bias_lr_mul=2.0), r"'bias_lr_mul' \(like 'bias_lr_mult', a top-level"),
])
def test_misspelt_multiplier_in_an_entry_raises(entry, match):
    with pytest.raises(ValueError, match=r"custom_keys\['head'\] has misspelt or misplaced "
                                         r"multiplier key\(s\) " + match) as e:
        build(Net(), paramwise_cfg=dict(custom_keys={"head": entry}))
    assert isinstance(e.value, AssertionError)      # mmengine's assert-style error type


def test_near_miss_that_the_optimizer_takes_passes():
    class Opt(torch.optim.SGD):
        def __init__(self, params, lr=0.1, lr_mul=1.0):
            super().__init__(params, lr=lr * lr_mul)
    m = Net()
    g = groups_by_name(m, build_optim_wrapper(m, dict(
        optimizer=dict(type=Opt, lr=0.1), paramwise_cfg=dict(custom_keys={"head": dict(
            lr_mul=0.5, decay_rate=0.9, weight_decay_mult=2.0, conv1_lr_mult=3.0)}))))
    # differently named keys (similarity < 0.8 to every multiplier) pass as well
    assert g["head.weight"]["lr_mul"] == 0.5 and g["head.weight"]["decay_rate"] == 0.9
    assert g["head.weight"]["weight_decay_mult"] == 2.0


def test_delete_slip_in_paramwise_cfg_warns_and_builds(caplog):
    """mmpretrain's Twins configs write paramwise_cfg=dict(_delete=True, ...): mmengine's Config
    directive is _delete_, so the base's keys were merged in; the key itself is ignored (as
    mmengine ignores it) with a warning that says so."""
    m = Net()
    with caplog.at_level(logging.WARNING, logger="fusedopt.config"):
        g = groups_by_name(m, build(m, paramwise_cfg=dict(_delete=True, norm_decay_mult=0.0)))
    assert g["backbone.bn.weight"]["weight_decay"] == 0.0
    assert any("paramwise_cfg._delete is ignored" in r.getMessage() and "'_delete_'" in
               r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="'norm_decay_mul'"):      # other unknown keys raise
        build(m, paramwise_cfg=dict(_delete=True, norm_decay_mul=0.0))

# ---- bad input ---------------------------------------------------------------------------------
def test_unknown_paramwise_key_raises_naming_it():
    with pytest.raises(ValueError, match="bias_lr_mul.*bias_lr_mult"):
        build(Net(), paramwise_cfg=dict(bias_lr_mul=2.0))


def test_unknown_optimizer_kwarg_raises_naming_it():
    with pytest.raises(TypeError, match="'momentom'.*'momentum'"):
        build_optim_wrapper(Net(), dict(optimizer=dict(type="FusedSGD", lr=0.1, momentom=0.9)))


def test_unknown_optimizer_type():
    with pytest.raises(KeyError, match="FusedSDG.*'FusedSGD'"):
        build_optim_wrapper(Net(), dict(optimizer=dict(type="FusedSDG", lr=0.1)))


@pytest.mark.parametrize("pw,exc,match", [
    ([1], TypeError, "paramwise_cfg should be None or a dict"),
    (dict(custom_keys=[1]), TypeError, "custom_keys must be a dict"),
    (dict(custom_keys={"a": 1}), TypeError, r"custom_keys\['a'\]"),
    (dict(bias_lr_mult="2"), TypeError, "bias_lr_mult"),
    (dict(bypass_duplicate=1), TypeError, "bypass_duplicate"),
])
def test_paramwise_types(pw, exc, match):
    with pytest.raises(exc, match=match):
        build(Net(), paramwise_cfg=pw)


@pytest.mark.parametrize("key", ["bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult"])
def test_decay_mult_without_weight_decay(key):
    with pytest.raises(ValueError, match=f"base_wd should not be None.*{key}"):
        build_optim_wrapper(Net(), dict(optimizer=dict(type="FusedAdam", lr=1e-3),
                                        paramwise_cfg={key: 0.0}))
    with pytest.raises(ValueError, match=r"base_wd should not be None.*custom_keys\['head'\]"):
        build_optim_wrapper(Net(), dict(optimizer=dict(type="FusedAdam", lr=1e-3),
                                        paramwise_cfg=dict(custom_keys={"head": dict(decay_mult=0)})))


def test_constructor_cfg_checks():
    with pytest.raises(TypeError, match="should be a dict"):
        DefaultOptimWrapperConstructor([1])
    with pytest.raises(AssertionError, match="optimizer"):      # mmengine asserts; ours is also
        DefaultOptimWrapperConstructor(dict(type="OptimWrapper"))   # a ValueError
    with pytest.raises(ValueError, match="optimizer"):
        DefaultOptimWrapperConstructor(dict(type="OptimWrapper"))
    with pytest.raises(KeyError, match="NoSuchConstructor"):
        build(Net(), constructor="NoSuchConstructor")
    with pytest.raises(KeyError, match="NoSuchWrapper.*optim_wrapper"):
        build(Net(), type="NoSuchWrapper")
    assert "DefaultOptimWrapperConstructor" in OPTIM_WRAPPER_CONSTRUCTORS
