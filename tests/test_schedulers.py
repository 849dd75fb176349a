"""fusedopt.schedulers against mmengine's schedulers (value by value) and closed forms; device
writes, graph-mode (device-evaluated) logic, chaining, resume, build_param_scheduler."""
import copy
import math
import pickle
import warnings

import pytest
import torch

import fusedopt
from fusedopt import schedulers as S

try:
    import mmengine.optim.scheduler  # noqa: F401
    from mmengine.registry import PARAM_SCHEDULERS as MM_SCHEDULERS
    HAVE_MM = True
except ImportError:  # pragma: no cover
    HAVE_MM = False

needs_mm = pytest.mark.skipif(not HAVE_MM, reason="mmengine not installed (test extra)")

LRS = [0.1, 0.05, 0.3]


def make_opt(kind, lrs=LRS, momentum=0.9):
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if kind == "SGD":
        return torch.optim.SGD(groups, lr=0.1, momentum=momentum)
    if kind == "Adam":
        return torch.optim.Adam(groups, lr=0.1, betas=(momentum, 0.999))
    if kind == "FusedSGD":
        return fusedopt.FusedSGD(groups, lr=0.1, momentum=momentum, backend="reference")
    if kind == "FusedAdam":
        return fusedopt.FusedAdam(groups, lr=0.1, betas=(momentum, 0.999), backend="reference")
    raise ValueError(kind)


def read(opt, name):
    if name == "momentum" and "betas" in opt.defaults:
        return [g["betas"][0] for g in opt.param_groups]
    return [g[name] for g in opt.param_groups]


def table_column(opt, name):
    from fusedopt import _hparams
    col = {"lr": _hparams.LR, "momentum": _hparams.BETA1}[name]
    (table,) = opt.hparam_tables.values()
    return table[:, col].tolist()


def build_mm(cfgs, opt, epoch_length=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [MM_SCHEDULERS.build(dict(c), default_args=dict(optimizer=opt,
                                                               epoch_length=epoch_length))
                for c in cfgs]


def step_all(scheds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in scheds:
            s.step()


# name, cfg (iteration-based), steps, param
CASES = [
    ("ConstantLR", dict(type="ConstantLR", factor=0.25, end=7, by_epoch=False), 12, "lr"),
    ("LinearLR", dict(type="LinearLR", start_factor=0.01, end=9, by_epoch=False), 14, "lr"),
    ("LinearLR-window", dict(type="LinearLR", start_factor=0.2, end_factor=0.7, begin=3, end=11,
                             by_epoch=False), 16, "lr"),
    ("StepLR", dict(type="StepLR", step_size=3, gamma=0.5, begin=2, end=20, by_epoch=False), 24,
     "lr"),
    ("MultiStepLR", dict(type="MultiStepLR", milestones=[2, 5, 5, 9], gamma=0.3, begin=1,
                         by_epoch=False), 14, "lr"),
    ("ExponentialLR", dict(type="ExponentialLR", gamma=0.9, begin=2, end=15, by_epoch=False),
     18, "lr"),
    ("CosineAnnealingLR", dict(type="CosineAnnealingLR", T_max=10, eta_min=1e-3, by_epoch=False),
     35, "lr"),
    ("CosineAnnealingLR-ratio", dict(type="CosineAnnealingLR", eta_min_ratio=0.05, begin=4,
                                     end=24, by_epoch=False), 30, "lr"),
    ("PolyLR", dict(type="PolyLR", eta_min=1e-4, power=2.0, begin=1, end=17, by_epoch=False),
     20, "lr"),
    ("PolyLR-default", dict(type="PolyLR", end=12, by_epoch=False), 14, "lr"),
    ("CosineAnnealingLR-default", dict(type="CosineAnnealingLR", T_max=6, by_epoch=False), 20,
     "lr"),
    ("OneCycleLR", dict(type="OneCycleLR", eta_max=0.5, total_steps=20, by_epoch=False), 20,
     "lr"),
    ("OneCycleLR-3phase-linear", dict(type="OneCycleLR", eta_max=[0.5, 0.2, 0.9], pct_start=0.25,
                                      anneal_strategy="linear", three_phase=True, begin=2,
                                      end=30, by_epoch=False), 29, "lr"),
    ("CosineRestartLR", dict(type="CosineRestartLR", periods=[5, 7, 4],
                             restart_weights=[1, 0.6, 0.3], eta_min=1e-3, by_epoch=False), 20,
     "lr"),
    ("CosineRestartLR-ratio", dict(type="CosineRestartLR", periods=[6, 6],
                                   restart_weights=[1, 0.5], eta_min_ratio=0.1, begin=3,
                                   by_epoch=False), 20, "lr"),
    ("ConstantMomentum", dict(type="ConstantMomentum", factor=0.5, end=5, by_epoch=False), 8,
     "momentum"),
    ("LinearMomentum", dict(type="LinearMomentum", start_factor=0.5, end=8, by_epoch=False), 12,
     "momentum"),
    ("StepMomentum", dict(type="StepMomentum", step_size=2, gamma=0.8, by_epoch=False), 10,
     "momentum"),
    ("MultiStepMomentum", dict(type="MultiStepMomentum", milestones=[3, 6], gamma=0.9,
                               by_epoch=False), 10, "momentum"),
    ("ExponentialMomentum", dict(type="ExponentialMomentum", gamma=0.98, by_epoch=False), 10,
     "momentum"),
    ("CosineAnnealingMomentum", dict(type="CosineAnnealingMomentum", T_max=8, eta_min=0.5,
                                     by_epoch=False), 12, "momentum"),
    ("PolyMomentum", dict(type="PolyMomentum", eta_min=0.5, end=10, by_epoch=False), 12,
     "momentum"),
    ("CosineRestartMomentum", dict(type="CosineRestartMomentum", periods=[4, 4],
                                   restart_weights=[1, 0.9], eta_min=0.5,
                                   by_epoch=False), 10, "momentum"),
    ("StepParamScheduler", dict(type="StepParamScheduler", param_name="weight_decay",
                                step_size=2, gamma=0.5, by_epoch=False), 8, "weight_decay"),
]
KINDS = ["SGD", "Adam", "FusedSGD", "FusedAdam"]


def make_pair(kind, name):
    opt = make_opt(kind)
    ref = make_opt("Adam" if "Adam" in kind else "SGD")
    if name == "weight_decay":
        for o in (opt, ref):
            for i, g in enumerate(o.param_groups):
                g["weight_decay"] = 0.01 * (i + 1)
    return opt, ref


@needs_mm
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_mmengine(case, kind):
    _, cfg, steps, name = case
    opt, ref = make_pair(kind, name)
    ours = S.build_param_scheduler(opt, cfg)
    theirs = build_mm([cfg], ref)
    fused = kind.startswith("Fused")
    for t in range(steps):
        expected = read(ref, name)
        assert read(opt, name) == expected, t                   # bit for bit
        assert ours[0].get_last_value() == theirs[0].get_last_value(), t
        if fused and name != "weight_decay":
            assert table_column(opt, name) == expected, t
        step_all(ours)
        step_all(theirs)


@needs_mm
@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
def test_reduce_on_plateau_matches_mmengine(kind):
    opt, ref = make_pair(kind, "lr")
    cfgs = [dict(type="ReduceOnPlateauLR", monitor="loss", factor=0.5, patience=1, cooldown=1,
                 min_value=[0.01, 0.02, 0.0], threshold=0.01),
            dict(type="ReduceOnPlateauMomentum", monitor="acc", rule="greater", factor=0.9,
                 patience=0, threshold_rule="abs", min_value=0.5)]
    ours = S.build_param_scheduler(opt, cfgs)
    theirs = build_mm(cfgs, ref)
    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.5, 0.6, 0.61, 0.62, 0.7, 0.8, 0.9, 0.95, 0.99]
    accs = [0.1, 0.2, 0.2, 0.19, 0.3, 0.3, 0.3, 0.31, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    for loss, acc in zip(losses, accs):
        for group in (ours, theirs):
            for s in group:
                s.step()                                # the per-epoch count
                s.step(dict(loss=loss, acc=acc))
        assert read(opt, "lr") == read(ref, "lr")
        assert read(opt, "momentum") == read(ref, "momentum")
    assert read(opt, "lr") != LRS


# ---- closed forms ------------------------------------------------------------------------------
def run(kind, cfgs, steps, name="lr", epoch_length=None):
    opt = make_opt(kind)
    scheds = S.build_param_scheduler(opt, cfgs, epoch_length=epoch_length)
    out = []
    for _ in range(steps):
        out.append(read(opt, name))
        step_all(scheds)
    return out


@pytest.mark.parametrize("kind", ["SGD", "FusedAdamW" if False else "FusedSGD"])
def test_closed_forms(kind):
    T = 12
    vals = run(kind, dict(type="LinearLR", start_factor=0.1, end=T + 1, by_epoch=False), 20)
    for t, v in enumerate(vals):
        f = 0.1 + 0.9 * min(t, T) / T
        assert v == pytest.approx([b * f for b in LRS], rel=1e-12)
    vals = run(kind, dict(type="CosineAnnealingLR", T_max=T, eta_min=0.01, by_epoch=False), T + 1)
    for t, v in enumerate(vals):
        assert v == pytest.approx([0.01 + (b - 0.01) * (1 + math.cos(math.pi * t / T)) / 2
                                   for b in LRS], rel=1e-12, abs=1e-15)
    vals = run(kind, dict(type="MultiStepLR", milestones=[3, 7], gamma=0.1, by_epoch=False), 10)
    for t, v in enumerate(vals):
        assert v == pytest.approx([b * 0.1 ** ((t >= 3) + (t >= 7)) for b in LRS], rel=1e-12)
    vals = run(kind, dict(type="PolyLR", eta_min=0.001, power=1.5, end=T + 1, by_epoch=False), T)
    for t, v in enumerate(vals):
        assert v == pytest.approx([0.001 + (b - 0.001) * ((T - t) / T) ** 1.5 for b in LRS],
                                  rel=1e-12)
    vals = run(kind, dict(type="ExponentialLR", gamma=0.8, by_epoch=False), 10)
    for t, v in enumerate(vals):
        assert v == pytest.approx([b * 0.8 ** t for b in LRS], rel=1e-12)


# ---- chaining ----------------------------------------------------------------------------------
CHAINS = {
    "overlap": [dict(type="LinearLR", start_factor=0.05, end=8, by_epoch=False),
                dict(type="CosineAnnealingLR", T_max=20, eta_min=1e-4, begin=4, end=24,
                     by_epoch=False),
                dict(type="MultiStepLR", milestones=[2, 10], gamma=0.5, begin=3,
                     by_epoch=False)],
    "gaps": [dict(type="LinearLR", start_factor=0.1, end=5, by_epoch=False),
             dict(type="ExponentialLR", gamma=0.8, begin=9, end=14, by_epoch=False),
             dict(type="StepLR", step_size=2, gamma=0.5, begin=18, end=26, by_epoch=False),
             dict(type="CosineRestartLR", periods=[4, 4], restart_weights=[1, 0.5],
                  eta_min=1e-4, begin=28, end=36, by_epoch=False)],
    "lr+momentum": [dict(type="OneCycleLR", eta_max=0.4, total_steps=30, by_epoch=False),
                    dict(type="CosineAnnealingMomentum", T_max=30, eta_min=0.85,
                         by_epoch=False),
                    dict(type="LinearLR", start_factor=0.5, end=6, by_epoch=False)],
}


@needs_mm
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chain", list(CHAINS))
def test_chaining_matches_mmengine(chain, kind):
    cfgs = CHAINS[chain]
    opt, ref = make_pair(kind, "lr")
    ours = S.build_param_scheduler(opt, cfgs)
    theirs = build_mm(cfgs, ref)
    seen = set()
    for t in range(40 if chain != "lr+momentum" else 30):
        assert read(opt, "lr") == read(ref, "lr"), t
        assert read(opt, "momentum") == read(ref, "momentum"), t
        seen.add(tuple(read(opt, "lr")))
        for a, b in zip(ours, theirs):          # each one's values after its own last step
            assert a.get_last_value() == b.get_last_value(), (t, type(a).__name__)
        if kind.startswith("Fused"):
            assert table_column(opt, "lr") == read(ref, "lr")
            assert table_column(opt, "momentum") == read(ref, "momentum")
        step_all(ours)
        step_all(theirs)
    assert len(seen) > 10


# ---- config: by_epoch, convert_to_iter_based, the tutorial's snippets --------------------------
TUTORIAL = {
    "multistep": dict(type="MultiStepLR", by_epoch=True, milestones=[3, 5], gamma=0.1),
    "cosine": dict(type="CosineAnnealingLR", by_epoch=True, T_max=6),
    "warmup-iters": [dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=50),
                     dict(type="MultiStepLR", by_epoch=True, milestones=[3, 5], gamma=0.1)],
    "warmup-converted": [dict(type="LinearLR", start_factor=0.001, by_epoch=True, end=2,
                              convert_to_iter_based=True),
                         dict(type="CosineAnnealingLR", by_epoch=True, begin=2, T_max=4)],
    "momentum": [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=30),
                 dict(type="LinearMomentum", start_factor=0.001, by_epoch=False, begin=0,
                      end=60)],
    "converted-periods": [dict(type="MultiStepLR", by_epoch=True, milestones=[1, 4],
                               convert_to_iter_based=True),
                          dict(type="CosineRestartLR", periods=[2, 2], restart_weights=[1, 0.5],
                               eta_min=0.0, by_epoch=True, begin=1, convert_to_iter_based=True),
                          dict(type="StepMomentum", step_size=2, by_epoch=True, gamma=0.99,
                               convert_to_iter_based=True)],
}


@needs_mm
@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
@pytest.mark.parametrize("name", list(TUTORIAL))
def test_tutorial_configs_in_a_loop(name, kind):
    cfg = TUTORIAL[name]
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    epoch_length, epochs = 13, 7
    opt, ref = make_pair(kind, "lr")
    ours = S.build_param_scheduler(opt, cfg, epoch_length=epoch_length)
    theirs = build_mm(cfgs, ref, epoch_length=epoch_length)
    assert isinstance(ours, list) and len(ours) == len(cfgs)
    for a, b in zip(ours, theirs):
        assert (a.by_epoch, a.begin, a.end) == (b.by_epoch, b.begin, b.end)
    for _ in range(epochs):             # mmengine's ParamSchedulerHook
        for _ in range(epoch_length):
            assert read(opt, "lr") == read(ref, "lr")
            assert read(opt, "momentum") == read(ref, "momentum")
            step_all([s for s in ours if not s.by_epoch])
            step_all([s for s in theirs if not s.by_epoch])
        step_all([s for s in ours if s.by_epoch])
        step_all([s for s in theirs if s.by_epoch])


def test_build_param_scheduler_inputs():
    opt = make_opt("FusedSGD")

    class Wrapper:                       # an optim wrapper: .optimizer and .param_groups
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    wrapper = Wrapper(opt)
    (s,) = fusedopt.build_param_scheduler(wrapper, dict(type="ExponentialLR", gamma=0.5,
                                                        by_epoch=False))
    assert s.optimizer is wrapper
    s.step()
    assert read(opt, "lr") == [b * 0.5 for b in LRS]
    built = S.build_param_scheduler(opt, [s, dict(type="fusedopt.StepLR", step_size=1)])
    assert built[0] is s and isinstance(built[1], fusedopt.StepLR)
    with pytest.raises(KeyError):
        S.build_param_scheduler(opt, dict(type="NoSuchLR"))
    with pytest.raises(AssertionError):
        S.build_param_scheduler(opt, dict(type="StepLR", step_size=1,
                                          convert_to_iter_based=True))
    with pytest.raises(ValueError):
        S.LinearLR(opt, start_factor=2.0)
    with pytest.raises(ValueError):
        S.StepLR(opt, step_size=1, begin=5, end=5)
    with pytest.raises(ValueError):
        S.LinearMomentum(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))]))
    for name in S._schedules.__all__:
        assert getattr(fusedopt, name) is getattr(S, name)
        assert fusedopt.PARAM_SCHEDULERS.get(name) is getattr(S, name)
    assert fusedopt.build_param_scheduler is S.build_param_scheduler


def test_build_iter_from_epoch_scales():
    opt = make_opt("SGD")
    s = S.CosineRestartLR.build_iter_from_epoch(opt, periods=[2, 3], restart_weights=[1, 1],
                                                eta_min=0., begin=1, end=6,
                                                epoch_length=10)
    assert (s.periods, s.begin, s.end, s.by_epoch) == ([20, 30], 10, 60, False)
    s = S.MultiStepLR.build_iter_from_epoch(opt, milestones=[2, 3], epoch_length=4)
    assert sorted(s.milestones) == [8, 12] and s.end == S.INF
    s = S.OneCycleLR.build_iter_from_epoch(opt, eta_max=0.1, total_steps=3, epoch_length=5)
    assert s.total_steps == 15


# ---- device writes -----------------------------------------------------------------------------
def test_device_writes_do_not_rebuild_the_table():
    opt = make_opt("FusedSGD")
    scheds = S.build_param_scheduler(opt, CHAINS["overlap"])
    table = list(opt.hparam_tables.values())[0]
    for _ in range(10):
        step_all(scheds)
        # no host-side rebuild of the table: the scheduler wrote the same tensor in place
        assert list(opt.hparam_tables.values())[0] is table
    lr = table[:, 0].tolist()
    assert [g["lr"] for g in opt.param_groups] == lr        # param_group reads the current value
    # the dict view is refreshed lazily: step without reading, then look
    step_all(scheds)
    assert opt.param_groups[1]["lr"] == table[1, 0].item()
    assert opt.state_dict()["param_groups"][2]["lr"] == table[2, 0].item()
    # a float written by someone else reaches both the table and the next scheduler step
    opt.param_groups[0]["lr"] = 0.5
    assert opt.hparam_tables[torch.device("cpu")][0, 0].item() == 0.5
    step_all(scheds)
    ref = make_opt("SGD")
    ref_s = S.build_param_scheduler(ref, CHAINS["overlap"])
    for _ in range(11):
        step_all(ref_s)
    ref.param_groups[0]["lr"] = 0.5
    step_all(ref_s)
    assert read(opt, "lr") == read(ref, "lr")
    copy.deepcopy(opt.param_groups)
    assert pickle.loads(pickle.dumps(opt.param_groups))[1]["lr"] == read(ref, "lr")[1]


def test_step_with_fused_optimizer_uses_scheduled_lr():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = fusedopt.FusedSGD([{"params": [p]} for p in params], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD([{"params": [p]} for p in clones], lr=0.1, momentum=0.9)
    cfg = [dict(type="LinearLR", start_factor=0.1, end=4, by_epoch=False),
           dict(type="CosineAnnealingMomentum", T_max=6, eta_min=0.5, by_epoch=False)]
    a, b = S.build_param_scheduler(opt, cfg), S.build_param_scheduler(ref, cfg)
    for _ in range(6):
        for ps in (params, clones):
            for i, p in enumerate(ps):
                p.grad = torch.full_like(p, float(i + 1))
        opt.step()
        ref.step()
        step_all(a)
        step_all(b)
    for p, q in zip(params, clones):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ---- graph mode: device-evaluated schedule == host schedule -------------------------------------
DEVICE_CASES = [c for c in CASES] + [("chain-" + k, v, 30 if "momentum" in k else 40, "lr")
                                     for k, v in CHAINS.items()]


@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_device_schedule_matches_host(case, kind):
    _, cfg, steps, name = case
    host_opt, _ = make_pair(kind, name)
    dev_opt, _ = make_pair(kind, name)
    host = S.build_param_scheduler(host_opt, cfg)
    dev = S.DeviceSchedule(S.build_param_scheduler(dev_opt, cfg))
    names = {s.param_name for s in host}
    for t in range(steps - 1):
        step_all(host)
        dev.step()
        for s_host in host:
            got = dev.values(dev.schedulers[host.index(s_host)]).tolist()
            assert got == pytest.approx(read(host_opt, s_host.param_name), rel=1e-12,
                                        abs=1e-300), (t, s_host.param_name)
        if kind.startswith("Fused") and "weight_decay" not in names:
            for n in names:                 # the device table got them, the dicts not yet
                assert table_column(dev_opt, n) == pytest.approx(read(host_opt, n), rel=1e-12)
    dev.sync_to_host()
    for n in names:
        assert read(dev_opt, n) == pytest.approx(read(host_opt, n), rel=1e-12)
    for a, b in zip(host, dev.schedulers):
        assert (a.last_step, a._global_step) == (b.last_step, b._global_step)


def test_device_schedule_rejects_plateau():
    opt = make_opt("SGD")
    with pytest.raises(NotImplementedError):
        S.DeviceSchedule([S.ReduceOnPlateauLR(opt)])


# ---- resume --------------------------------------------------------------------------------------
RESUMES = {
    "warmup-cosine": [dict(type="LinearLR", start_factor=0.01, end=10, by_epoch=False),
                      dict(type="CosineAnnealingLR", T_max=30, eta_min=1e-4, begin=5, end=35,
                           by_epoch=False),
                      dict(type="ConstantMomentum", factor=0.5, end=12, by_epoch=False)],
    "onecycle-poly": [dict(type="OneCycleLR", eta_max=0.3, total_steps=40, by_epoch=False),
                      dict(type="PolyMomentum", eta_min=0.5, end=40, by_epoch=False)],
    "restart-step": [dict(type="CosineRestartLR", periods=[5, 9], restart_weights=[1, 0.5],
                          eta_min_ratio=0.1, by_epoch=False),
                     dict(type="StepLR", step_size=4, gamma=0.7, begin=2, by_epoch=False)],
}


@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
@pytest.mark.parametrize("order", ["optimizer-first", "schedulers-first", "no-optimizer-state"])
@pytest.mark.parametrize("config", list(RESUMES))
def test_resume_mid_schedule(kind, order, config):
    RESUME = RESUMES[config]
    total, cut = 30, 7
    ref = make_opt(kind)
    ref_s = S.build_param_scheduler(ref, RESUME)
    expected = []
    for _ in range(total):
        expected.append((read(ref, "lr"), read(ref, "momentum")))
        step_all(ref_s)

    opt = make_opt(kind)
    scheds = S.build_param_scheduler(opt, RESUME)
    for _ in range(cut):
        step_all(scheds)
    ckpt = pickle.loads(pickle.dumps({"opt": opt.state_dict(),
                                      "sched": [s.state_dict() for s in scheds]}))

    new = make_opt(kind)
    if order == "optimizer-first":      # the mmengine pitfall: start_factor would apply again
        new.load_state_dict(ckpt["opt"])
        new_s = S.build_param_scheduler(new, RESUME)
    else:
        new_s = S.build_param_scheduler(new, RESUME)
        if order == "schedulers-first":
            new.load_state_dict(ckpt["opt"])
    for s, state in zip(new_s, ckpt["sched"]):
        s.load_state_dict(state)
    for t in range(cut, total):
        assert (read(new, "lr"), read(new, "momentum")) == expected[t], t
        step_all(new_s)


@needs_mm
def test_mmengine_pitfall_is_real():
    """The case the resume test guards: mmengine re-applies start_factor when the schedulers
    are built after the optimizer state is loaded."""
    cfg = [dict(type="LinearLR", start_factor=0.01, end=10, by_epoch=False)]
    opt = make_opt("SGD")
    (s,) = build_mm(cfg, opt)
    for _ in range(5):
        step_all([s])
    saved_lr, opt_state, s_state = read(opt, "lr"), opt.state_dict(), s.state_dict()
    new = make_opt("SGD")
    new.load_state_dict(opt_state)
    (s2,) = build_mm(cfg, new)
    s2.load_state_dict(s_state)
    assert read(new, "lr") != saved_lr


def test_resume_keep_config_warns_and_uses_new_schedule():
    """The opt-in: ``keep_config=True`` keeps the built schedule (the default restores the
    saved one, as mmengine: tests/test_mmengine_parity.py)."""
    opt = make_opt("FusedSGD")
    (s,) = S.build_param_scheduler(opt, dict(type="MultiStepLR", milestones=[3, 6], gamma=0.5,
                                             by_epoch=False))
    for _ in range(4):
        s.step()
    state = s.state_dict()
    new = make_opt("FusedSGD")
    (s2,) = S.build_param_scheduler(new, dict(type="MultiStepLR", milestones=[3, 8], gamma=0.1,
                                              by_epoch=False))
    with pytest.warns(UserWarning, match="milestones.*gamma|gamma.*milestones"):
        s2.load_state_dict(state, keep_config=True)
    assert (s2.milestones, s2.gamma) == ({3: 1, 8: 1}, 0.1)
    assert read(new, "lr") == [b * 0.5 for b in LRS]          # saved values
    for _ in range(4):
        s2.step()
    assert read(new, "lr") == pytest.approx([b * 0.05 for b in LRS], rel=1e-12)  # new milestones


@needs_mm
def test_loads_an_mmengine_state_dict():
    cfg = dict(type="StepLR", step_size=2, gamma=0.5, by_epoch=False)
    ref = make_opt("SGD")
    (theirs,) = build_mm([cfg], ref)
    step_all([theirs] * 1)
    for _ in range(4):
        step_all([theirs])
    opt = make_opt("FusedSGD")
    opt.load_state_dict(ref.state_dict())
    (ours,) = S.build_param_scheduler(opt, cfg)
    ours.load_state_dict(theirs.state_dict())
    assert (ours.last_step, ours._global_step) == (theirs.last_step, theirs._global_step)
    for _ in range(5):
        step_all([ours, theirs])
        assert read(opt, "lr") == read(ref, "lr")


@needs_mm
@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
def test_last_step_argument_matches_mmengine(kind):
    """Resuming without a state dict (``last_step=k``) needs initial_lr in the groups."""
    cfg = dict(type="CosineAnnealingLR", T_max=20, eta_min=1e-3, by_epoch=False, last_step=4)
    opt, ref = make_pair(kind, "lr")
    for o in (opt, ref):
        for g in o.param_groups:
            g["initial_lr"] = g["lr"] * 2
    ours, theirs = S.build_param_scheduler(opt, cfg), build_mm([cfg], ref)
    for _ in range(10):
        assert read(opt, "lr") == read(ref, "lr")
        step_all(ours)
        step_all(theirs)
    with pytest.raises(KeyError):
        S.build_param_scheduler(make_opt(kind), cfg)


@needs_mm
def test_mmengine_optim_wrapper_and_weights_only_checkpoint():
    import io

    from mmengine.optim import OptimWrapper
    opt = make_opt("FusedSGD")
    wrapper = OptimWrapper(opt)
    scheds = S.build_param_scheduler(wrapper, [CHAINS["overlap"][0],
                                               dict(type="ReduceOnPlateauLR", patience=0)])
    for _ in range(3):
        step_all(scheds[:1])
    assert wrapper.get_lr()["lr"] == read(opt, "lr")
    buf = io.BytesIO()
    torch.save([s.state_dict() for s in scheds], buf)
    buf.seek(0)
    states = torch.load(buf, weights_only=True)        # plain containers only
    new = make_opt("FusedSGD")
    new_s = S.build_param_scheduler(OptimWrapper(new), [CHAINS["overlap"][0],
                                                        dict(type="ReduceOnPlateauLR", patience=0)])
    for s, st in zip(new_s, states):
        s.load_state_dict(st)
    assert read(new, "lr") == read(opt, "lr")


def test_optimizer_state_load_after_scheduling_wins():
    """A fusedopt optimizer's param_groups list is refreshed lazily; loading an optimizer state
    replaces it, and the loaded values are what the table and the dicts show."""
    opt = make_opt("FusedSGD")
    saved = opt.state_dict()
    scheds = S.build_param_scheduler(opt, dict(type="ExponentialLR", gamma=0.5, by_epoch=False))
    step_all(scheds)
    opt.load_state_dict(saved)
    assert read(opt, "lr") == LRS
    assert table_column(opt, "lr") == LRS
    step_all(scheds)                    # the next step starts from the loaded values
    assert read(opt, "lr") == [b * 0.5 for b in LRS]
    assert table_column(opt, "lr") == [b * 0.5 for b in LRS]


@pytest.mark.parametrize("kind", ["Adam", "FusedAdam"])
def test_generic_form_on_beta2_and_eps(kind):
    opt = make_opt(kind)
    a = S.ExponentialParamScheduler(opt, "beta2", gamma=0.5, by_epoch=False)
    b = S.StepParamScheduler(opt, "eps", step_size=1, gamma=10.0, by_epoch=False)
    a.step()
    b.step()
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.999 * 0.5)] * 3
    assert [g["eps"] for g in opt.param_groups] == [1e-8 * 10.0] * 3
    assert [g["initial_beta2"] for g in opt.param_groups] == [0.999] * 3
    if kind == "FusedAdam":
        from fusedopt import _hparams
        (table,) = opt.hparam_tables.values()
        assert table[:, _hparams.BETA2].tolist() == [0.999 * 0.5] * 3
        assert table[:, _hparams.EPS].tolist() == [1e-8 * 10.0] * 3


@needs_mm
@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
@pytest.mark.parametrize("chain", ["overlap", "lr+momentum"])
def test_mmengine_wrapper_base_param_settings(kind, chain):
    """mmengine's wrapper of a multi-group optimizer schedules a dummy group too
    (get_lr()['base_lr']); so do fusedopt's schedulers."""
    from mmengine.optim import OptimWrapper
    cfgs = CHAINS[chain] + [dict(type="ReduceOnPlateauLR", patience=0, factor=0.5)]
    opt, ref = make_pair(kind, "lr")
    w, w_ref = OptimWrapper(opt), OptimWrapper(ref)
    assert w.base_param_settings is not None
    ours, theirs = S.build_param_scheduler(w, cfgs), build_mm(cfgs, w_ref)
    for t in range(25):
        assert w.get_lr() == w_ref.get_lr(), t
        assert w.get_momentum() == w_ref.get_momentum(), t
        for a, b in zip(ours, theirs):
            assert a.get_last_value() == b.get_last_value(), (t, type(a).__name__)
            assert a.base_values == getattr(b, "base_values", a.base_values)
        step_all(ours[:-1])
        step_all(theirs[:-1])
        if t % 5 == 4:
            for group in (ours, theirs):
                group[-1].step()
                group[-1].step(dict(loss=1.0))
    state = [s.state_dict() for s in ours]
    new = make_opt(kind)
    w_new = OptimWrapper(new)
    new_s = S.build_param_scheduler(w_new, cfgs)
    for s, st in zip(new_s, state):
        s.load_state_dict(st)
    assert w_new.get_lr() == w.get_lr()


@needs_mm
def test_with_fusedopt_optim_wrapper_in_a_training_loop():
    """fusedopt.build_optim_wrapper + build_param_scheduler, stepped like mmengine's hook,
    against mmengine's schedulers on mmengine's wrapper of torch.optim.SGD."""
    from mmengine.optim import OptimWrapper as MMOptimWrapper
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 2))
    ref_model = copy.deepcopy(model)
    wcfg = dict(optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9, weight_decay=1e-4),
                paramwise_cfg=dict(norm_decay_mult=0.))
    wrapper = fusedopt.build_optim_wrapper(model, dict(type="OptimWrapper", **wcfg))
    ref_groups = [dict(g, params=[dict(ref_model.named_parameters())[n] for n, q in
                                  model.named_parameters() if any(q is p for p in g["params"])])
                  for g in wrapper.optimizer.param_groups]
    ref = MMOptimWrapper(torch.optim.SGD(ref_groups, lr=0.1, momentum=0.9, weight_decay=1e-4))
    cfg = TUTORIAL["warmup-converted"] + [dict(type="CosineAnnealingMomentum", T_max=20,
                                               eta_min=0.8, by_epoch=False)]
    ours = fusedopt.build_param_scheduler(wrapper, cfg, epoch_length=5)
    theirs = build_mm(cfg, ref, epoch_length=5)
    for _ in range(4):
        for _ in range(5):
            x = torch.randn(8, 4)
            wrapper.update_params(model(x).square().mean())
            ref.update_params(ref_model(x).square().mean())
            step_all([s for s in ours if not s.by_epoch])
            step_all([s for s in theirs if not s.by_epoch])
            assert wrapper.get_lr() == ref.get_lr()
            assert wrapper.get_momentum() == ref.get_momentum()
        step_all([s for s in ours if s.by_epoch])
        step_all([s for s in theirs if s.by_epoch])
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@needs_mm
def test_mixed_with_mmengine_base_for_param_scheduler_hook():
    """mmengine's ParamSchedulerHook hands validation metrics only to instances of its
    _ParamScheduler. A subclass mixing it in (what an mmengine adapter can register) keeps
    fusedopt's behaviour and receives them."""
    from mmengine.hooks import ParamSchedulerHook
    from mmengine.optim import _ParamScheduler

    from fusedopt.schedulers.compat import mixed_with
    mixed = mixed_with(_ParamScheduler)
    assert set(mixed) == set(S._schedules.__all__)
    assert all(issubclass(c, (getattr(S, n), _ParamScheduler)) for n, c in mixed.items())
    opt = make_opt("FusedSGD")
    scheds = [mixed["LinearLR"](opt, start_factor=0.5, end=3),
              mixed["ReduceOnPlateauLR"](opt, patience=0, factor=0.5)]

    class Runner:
        param_schedulers = scheds

    hook = ParamSchedulerHook()
    for _ in range(3):
        hook.after_train_epoch(Runner)
        hook.after_val_epoch(Runner, dict(loss=1.0))
    # LinearLR: 0.5 -> 0.75 -> 1.0 of base; plateau: halves once per epoch after the first
    assert read(opt, "lr") == pytest.approx([b * 0.25 for b in LRS], rel=1e-12)
    assert table_column(opt, "lr") == read(opt, "lr")
    clone = pickle.loads(pickle.dumps(scheds[0].state_dict()))
    assert clone["last_step"] == scheds[0].last_step
    assert type(pickle.loads(pickle.dumps(scheds[0]))) is type(scheds[0])


def _count_ops(fn):
    """Number of aten ops ``fn`` runs; fails on a device-to-host read (.item(), .tolist())."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert func is not torch.ops.aten._local_scalar_dense.default, "host read"
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


CASE = {c[0]: c[1] for c in CASES}


@pytest.mark.parametrize("cfg", [CASE["CosineAnnealingLR"], CASE["LinearLR"],
                                 CASE["CosineRestartLR"], CASE["OneCycleLR"]],
                         ids=["cosine", "linear", "restart", "onecycle"])
def test_step_costs_o1_tensor_ops(cfg):
    """A scheduler step on a fusedopt optimizer: the same few tensor ops for 4 or 512 groups."""
    counts = []
    for groups in (4, 512):
        opt = make_opt("FusedSGD", lrs=[0.1 + 0.001 * i for i in range(groups)])
        (s,) = S.build_param_scheduler(opt, cfg)
        for _ in range(3):
            s.step()
        counts.append(_count_ops(s.step))
    assert counts[0] == counts[1] and counts[0] <= 8, counts


@pytest.mark.parametrize("kind", ["SGD", "FusedAdam"])
@pytest.mark.parametrize("name", ["warmup-iters", "multistep", "converted-periods", "momentum"])
def test_device_schedule_mixed_iter_and_epoch(name, kind):
    """Graph mode replays a config mixing by-iteration and by-epoch schedulers: one device step
    per iteration, the epoch-based ones gated on device at every epoch end."""
    cfg, epoch_length = TUTORIAL[name], 7
    host_opt, dev_opt = make_opt(kind), make_opt(kind)
    host = S.build_param_scheduler(host_opt, cfg, epoch_length=epoch_length)
    dev = S.DeviceSchedule(S.build_param_scheduler(dev_opt, cfg, epoch_length=epoch_length),
                           epoch_length=epoch_length)
    for _ in range(6):
        for _ in range(epoch_length):
            step_all([s for s in host if not s.by_epoch])
            if _ == epoch_length - 1:
                step_all([s for s in host if s.by_epoch])
            dev.step()
            for n in ("lr", "momentum"):
                if any(s.param_name == n for s in host):
                    got = dev.values(next(s for s in dev.schedulers if s.param_name == n))
                    assert got.tolist() == pytest.approx(read(host_opt, n), rel=1e-12)
    dev.sync_to_host()
    assert read(dev_opt, "lr") == pytest.approx(read(host_opt, "lr"), rel=1e-12)
    if any(s.by_epoch for s in host):
        with pytest.raises(ValueError, match="epoch_length"):
            S.DeviceSchedule(S.build_param_scheduler(make_opt(kind), cfg, epoch_length=7))


@pytest.mark.parametrize("kind", ["SGD", "FusedSGD"])
def test_device_schedule_step_reads_nothing_back(kind):
    cfg = CHAINS["overlap"] + CHAINS["gaps"][1:] + [TUTORIAL["warmup-iters"][1]] + [
        c[1] for c in CASES if c[0] in ("ConstantLR", "PolyLR", "CosineAnnealingLR-ratio",
                                        "OneCycleLR", "CosineRestartLR-ratio",
                                        "LinearMomentum")]
    counts = []
    for groups in (3, 300):
        opt = make_opt(kind, lrs=[0.1 + 0.001 * i for i in range(groups)])
        dev = S.DeviceSchedule(S.build_param_scheduler(opt, cfg, epoch_length=5),
                               epoch_length=5)
        counts.append(_count_ops(dev.step))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("kind", ["FusedSGD", "FusedAdam"])
def test_write_through_a_kept_group_reference_wins(kind):
    opt = make_opt(kind)
    (lr, mom) = S.build_param_scheduler(opt, [dict(type="ExponentialLR", gamma=0.5,
                                                   by_epoch=False),
                                              dict(type="ExponentialMomentum", gamma=0.9,
                                                   by_epoch=False)])
    kept = opt.param_groups[1]
    lr.step()
    mom.step()                                  # pending, not in the dicts yet
    kept["lr"] = 0.777
    assert read(opt, "lr") == [LRS[0] * 0.5, 0.777, LRS[2] * 0.5]
    assert read(opt, "momentum") == [0.9 * 0.9] * 3
    assert table_column(opt, "lr") == read(opt, "lr")
    lr.step()
    assert read(opt, "lr") == [LRS[0] * 0.5 * 0.5, 0.777 * 0.5, LRS[2] * 0.5 * 0.5]
    assert table_column(opt, "lr") == read(opt, "lr")
