"""Issue #26 item 4, CI-sized: optim_wrapper snippets shaped like the real OpenMMLab configs,
built by mmengine's builder and by fusedopt's standalone layer on the stand-in model of
scripts/real_configs.py (which runs every config of mmpretrain and mmaction2; its summary is in
bench/results/configs/), stepped 3 times with equal grads and compared: param groups, params and
optimizer states after every step, to the tolerance table."""
import importlib.util
from pathlib import Path

import pytest
import torch

import fusedopt
from helpers import CPU_BACKENDS
from tolerances import TOLERANCE

pytest.importorskip("mmengine")

_spec = importlib.util.spec_from_file_location(
    "real_configs", Path(__file__).resolve().parent.parent / "scripts" / "real_configs.py")
real_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_configs)


class LoopLARS(torch.optim.Optimizer):
    """LARS one parameter at a time, as Note [LARS] states it: mmengine's side of the LARS
    case (mmengine has no 'LARS'; the configs take mmpretrain's, which scripts/real_configs.py
    runs where mmpretrain is installed)."""

    def __init__(self, params, lr, momentum=0, weight_decay=0, dampening=0, eta=1e-3,
                 nesterov=False, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      dampening=dampening, eta=eta, nesterov=nesterov, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = p.norm().item(), p.grad.norm().item()
                trust = 1.0
                if not group.get("lars_exclude", False) and w_norm != 0 and g_norm != 0:
                    trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                d = (p.grad + wd * p) * (group["lr"] * trust)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(
                            d, alpha=1 - group["dampening"])
                    buf = state["momentum_buffer"]
                    d = d + momentum * buf if group["nesterov"] else buf
                p.sub_(d)


# the real configs' shapes, in this file's words (counts from bench/results/configs/)
CASES = {
    # SimCLR/BYOL/MoCo: LARS under AMP, norms, biases and downsample norms excluded from the
    # trust ratio and from decay through custom_keys (mmpretrain: 10 distinct LARS wrappers)
    "simclr-lars": dict(
        type="AmpOptimWrapper", loss_scale="dynamic",
        optimizer=dict(type="LARS", lr=4.8, momentum=0.9, weight_decay=1e-6),
        paramwise_cfg=dict(custom_keys={
            "bn": dict(decay_mult=0, lars_exclude=True),
            "bias": dict(decay_mult=0, lars_exclude=True),
            "downsample.1": dict(decay_mult=0, lars_exclude=True)})),
    # SimSiam: the predictor's lr is held by a hook that reads the group's fix_lr
    "simsiam-fix-lr": dict(
        optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(custom_keys={"predictor": dict(fix_lr=True)})),
    # mmaction2's TSN/TSM/SlowFast schedules: SGD with clip_grad max_norm=40
    "tsn-clip40": dict(
        optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
        clip_grad=dict(max_norm=40, norm_type=2)),
    # ViT/Swin/ConvNeXt: AdamW, no decay on norms, biases, flat params and the embeddings
    "vit-adamw": dict(
        optimizer=dict(type="AdamW", lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                           custom_keys={".cls_token": dict(decay_mult=0.0),
                                        ".pos_embed": dict(decay_mult=0.0)}),
        clip_grad=dict(max_norm=5.0)),
}
MM_OPTIMIZERS = {"LARS": LoopLARS}

# 'as-written': the type the config names from both registries (for 'LARS': LoopLARS against
# fusedopt's FusedLARS on the default backend); 'fused-<backend>': fusedopt's class on a backend
MODES = ["as-written", *(f"fused-{b}" for b in CPU_BACKENDS)]


@pytest.mark.parametrize("case,mode,dname",
                         [pytest.param(case, mode, dname, id=f"{case}-{mode}-{dname}")
                          for case in CASES for mode in MODES for dname in real_configs.DTYPES])
def test_real_config_snippet_builds_and_steps_like_mmengine(case, mode, dname):
    cfg, dtype = CASES[case], real_configs.DTYPES[dname]
    mm, fo = real_configs.builders(mode, MM_OPTIMIZERS)
    theirs = real_configs.run(mm, cfg, dtype, steps=3)
    ours = real_configs.run(fo, cfg, dtype, steps=3)
    assert not isinstance(theirs, Exception), theirs
    assert not isinstance(ours, Exception), ours
    assert len(ours) == len(theirs) == 4                     # after the build, after each step
    same_class = mode == "as-written" and cfg["optimizer"]["type"] != "LARS"
    res = real_configs.compare(theirs, ours, dtype, TOLERANCE, same_class)
    assert res["agree"], res["first"]
    if same_class:                  # torch's class on both sides: the same ops, the same bits
        assert res["bitwise"], res["first"]
    # every key of a custom_keys entry reached fusedopt's groups with mmengine's value
    entry_keys = {k for e in (cfg.get("paramwise_cfg") or {}).get("custom_keys", {}).values()
                  for k in e}
    groups_mm, groups_fo = theirs[0][2], ours[0][2]
    seen = set()
    for name, settings in groups_mm.items():
        for k in entry_keys & settings.keys():
            assert groups_fo[name].get(k) == settings[k], (name, k)
            seen.add(k)
    assert seen == entry_keys


def test_snippets_move_the_params():
    """The comparison above is not vacuous: 3 steps change every trainable parameter, and the
    clip_grad cases clip (the stand-in's grads have norm ~160 > 40)."""
    for case, cfg in CASES.items():
        mm, _ = real_configs.builders("as-written", MM_OPTIMIZERS)
        snaps = real_configs.run(mm, cfg, torch.float64, steps=3)
        assert not isinstance(snaps, Exception), (case, snaps)
        first, last = snaps[0][0], snaps[-1][0]
        trainable = [n for n, p in real_configs.stand_in(cfg, torch.float64).named_parameters()
                     if p.requires_grad]
        assert trainable and all(not torch.equal(first[n], last[n]) for n in trainable), case
    model = real_configs.stand_in(CASES["tsn-clip40"], torch.float64)
    g = real_configs.grads(model, 1)[0]
    assert torch.linalg.vector_norm(torch.stack([x.norm() for x in g.values()])) > 40


def test_lars_exclude_changes_the_step():
    """FusedLARS reads the lars_exclude that the constructor passed through: without the key
    the excluded params step differently."""
    cfg = CASES["simclr-lars"]
    plain = dict(cfg, paramwise_cfg=dict(custom_keys={
        k: {m: v for m, v in e.items() if m != "lars_exclude"}
        for k, e in cfg["paramwise_cfg"]["custom_keys"].items()}))
    _, fo = real_configs.builders("fused-reference", MM_OPTIMIZERS)
    a, b = (real_configs.run(fo, c, torch.float64, steps=1) for c in (cfg, plain))
    assert not torch.equal(a[-1][0]["backbone.bn.weight"], b[-1][0]["backbone.bn.weight"])
    assert torch.equal(a[-1][0]["head.fc.weight"], b[-1][0]["head.fc.weight"])
    # the configs' type='LARS' is fusedopt's drop-in in the standalone registry
    wrapper = fusedopt.build_optim_wrapper(real_configs.stand_in(cfg, torch.float32), dict(
        optimizer=dict(cfg["optimizer"], backend="reference"), paramwise_cfg=cfg["paramwise_cfg"]))
    assert isinstance(wrapper.optimizer, fusedopt.FusedLARS)
