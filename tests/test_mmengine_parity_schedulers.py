"""Issue #15, schedulers: fusedopt's schedulers against mmengine 0.10's, behaviour by behaviour:
state_dict/load_state_dict, the step-order warnings, momentum on the Adam family, error types,
and a scheduler-written out-of-range value."""
import pickle
import warnings

import pytest
import torch

import fusedopt
from fusedopt import schedulers as S

mmengine = pytest.importorskip("mmengine")
import mmengine.optim  # noqa: E402,F401  (registers mmengine's schedulers)
from mmengine.registry import PARAM_SCHEDULERS as MM  # noqa: E402

LRS = [0.1, 0.3]


def make_opt(kind, momentum=0.9):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    return {
        "SGD": lambda: torch.optim.SGD(groups, lr=0.1, momentum=momentum),
        "FusedSGD": lambda: fusedopt.FusedSGD(groups, lr=0.1, momentum=momentum, backend="cpu"),
        "Adam": lambda: torch.optim.Adam(groups, lr=0.1, betas=(momentum, 0.999)),
        "FusedAdam": lambda: fusedopt.FusedAdam(groups, lr=0.1, betas=(momentum, 0.999),
                                                backend="cpu"),
    }[kind]()


def twin(kind):
    """The torch optimizer mmengine's scheduler runs on beside ``kind``."""
    return "Adam" if "Adam" in kind else "SGD"


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def step(s, metric=None):
    quiet(s.step) if metric is None else quiet(s.step, dict(loss=metric))


# ---- load_state_dict restores every saved attribute ------------------------------------------
# (name, cfg the state is saved from, a different cfg the state is loaded into)
CHANGED = [
    ("StepLR", dict(step_size=3, gamma=0.1), dict(step_size=1, gamma=0.005)),
    ("MultiStepLR", dict(milestones=[2, 5, 9], gamma=0.1), dict(milestones=[1, 4, 6], gamma=0.01)),
    ("ExponentialLR", dict(gamma=0.9), dict(gamma=0.5)),
    ("ConstantLR", dict(factor=0.5, end=6), dict(factor=0.2, end=3)),
    ("LinearLR", dict(start_factor=1 / 3, end=8), dict(start_factor=0.0, end_factor=0.3)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=1e-4), dict(T_max=5, eta_min=5e-5)),
    ("PolyLR", dict(eta_min=1e-3, power=2.0, end=12), dict(power=0.5, end=30)),
    ("OneCycleLR", dict(eta_max=0.5, total_steps=30),
     dict(eta_max=0.2, total_steps=40, pct_start=0.5, anneal_strategy="linear")),
    ("CosineRestartLR", dict(periods=[3, 4], restart_weights=[1, 0.5], eta_min=0.0),
     dict(periods=[5], restart_weights=[1], eta_min_ratio=0.1)),
    ("ReduceOnPlateauLR", dict(patience=1), dict(patience=3, factor=0.5)),
    ("LinearMomentum", dict(start_factor=0.5, end=7), dict(start_factor=0.1, end=20)),
    ("CosineAnnealingMomentum", dict(T_max=6, eta_min=0.5), dict(T_max=9, eta_min=0.1)),
    ("StepParamScheduler", dict(param_name="weight_decay", step_size=2, gamma=0.5),
     dict(param_name="weight_decay", step_size=5, gamma=0.1)),
]
MM_ONLY = ("anneal_func", "_schedule_phases", "use_betas")   # mmengine's internals


def _advance(o, s, plateau, n):
    for i in range(n):
        o.step()
        step(s, metric=1.0 if plateau else None)


@pytest.mark.parametrize("kind", ["SGD", "FusedSGD", "Adam", "FusedAdam"])
@pytest.mark.parametrize("name,cfg,other", CHANGED, ids=[c[0] for c in CHANGED])
def test_load_state_dict_restores_every_attribute(name, cfg, other, kind):
    """mmengine's resume check: a scheduler built with another config loads the state and then
    holds the same attributes and last values as the one that saved it; with fusedopt, and next
    to mmengine's own scheduler doing the same, value for value afterwards."""
    plateau = name.startswith("ReduceOnPlateau")
    ours_opt, mm_opt = make_opt(kind), make_opt(twin(kind))
    for o in (ours_opt, mm_opt):
        for i, g in enumerate(o.param_groups):
            g["weight_decay"] = 0.01 * (i + 1)
    ours = quiet(getattr(S, name), ours_opt, **cfg)
    theirs = quiet(MM.get(name), mm_opt, **cfg)
    _advance(ours_opt, ours, plateau, 5)
    _advance(mm_opt, theirs, plateau, 5)
    # the loading scheduler: another config, on the same optimizer (mmengine's test layout)
    ours2 = quiet(getattr(S, name), ours_opt, **other)
    theirs2 = quiet(MM.get(name), mm_opt, **other)
    state = pickle.loads(pickle.dumps(ours.state_dict()))
    with pytest.warns(UserWarning, match="checkpoint's schedule replaces"):
        ours2.load_state_dict(state)
    theirs2.load_state_dict(theirs.state_dict())
    for key, value in vars(ours).items():          # what mmengine's own test compares
        if key != "optimizer":
            assert vars(ours2)[key] == value, key
    assert ours2.get_last_value() == ours.get_last_value()
    for key, value in vars(theirs2).items():        # and what mmengine restores, we restore
        if key not in ("optimizer", *MM_ONLY):
            assert getattr(ours2, key) == value, key
    assert ours2.get_last_value() == theirs2.get_last_value()
    param = ours2.param_name
    for t in range(8):
        _advance(ours_opt, ours2, plateau, 1)
        _advance(mm_opt, theirs2, plateau, 1)
        got = [g["betas"][0] if param == "momentum" and "betas" in g else g[param]
               for g in ours_opt.param_groups]
        assert got == [g[param] for g in mm_opt.param_groups], t


@pytest.mark.parametrize("kind", ["SGD", "FusedSGD"])
def test_state_dicts_cross_load_with_mmengine(kind):
    """A state saved by either scheduler loads into the other, and both continue alike."""
    cfg = dict(milestones=[3, 7], gamma=0.5)
    for src, dst in (("fo", "mm"), ("mm", "fo")):
        build = {"fo": lambda o: quiet(S.MultiStepLR, o, **cfg),
                 "mm": lambda o: quiet(MM.get("MultiStepLR"), o, **cfg)}
        opt_a, opt_b = make_opt(kind), make_opt(kind)
        a, b = build[src](opt_a), build[dst](opt_b)
        _advance(opt_a, a, False, 4)
        opt_b.load_state_dict(opt_a.state_dict())
        quiet(b.load_state_dict, a.state_dict())
        assert (b.last_step, b._global_step, b.base_values) == (4, 4, a.base_values)
        for _ in range(6):
            _advance(opt_a, a, False, 1)
            _advance(opt_b, b, False, 1)
            assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]


def test_state_dict_loads_with_weights_only():
    import io
    opt = make_opt("FusedSGD")
    scheds = [quiet(c, opt, **kw) for c, kw in ((S.MultiStepLR, dict(milestones=[2, 2, 5])),
                                                (S.OneCycleLR, dict(eta_max=1.0, total_steps=9)),
                                                (S.ReduceOnPlateauLR, {}))]
    buf = io.BytesIO()
    torch.save([s.state_dict() for s in scheds], buf)
    buf.seek(0)
    states = torch.load(buf, weights_only=True)
    for s, st in zip(scheds, states):
        s.load_state_dict(st)                     # same config: no warning, same attributes
    assert scheds[0].milestones == {2: 2, 5: 1} and type(scheds[0].milestones).__name__ == "Counter"


# ---- the step-order warnings ------------------------------------------------------------------
def _kinds(record):
    """Which step-order warnings were raised (mmengine's wording or fusedopt's)."""
    out = set()
    for w in record:
        text = str(w.message)
        if "how-to-adjust-learning-rate" not in text:
            continue
        out.add("replaced" if ("overridden" in text or "was replaced" in text) else "before")
    return out


SCENARIOS = {
    "scheduler-first": lambda o, make: (make(o).step(), o.step()),
    "optimizer-first": lambda o, make: ((s := make(o)), o.step(), s.step(), o.step(), s.step()),
    "optimizer-before-build": lambda o, make: (o.step(), make(o).step()),   # counter resets
    "step-replaced": lambda o, make: (s := make(o), setattr(o, "step", lambda: None), o.step(),
                                      s.step()),
    "resume-last-step": lambda o, make: ([g.setdefault("initial_lr", 0.01)
                                          for g in o.param_groups],
                                         make(o, last_step=10).step(), o.step()),
    "plateau": lambda o, make: (make(o, plateau=True).step(), o.step()),
}


def _maker(lib):
    def make(o, last_step=-1, plateau=False):
        if plateau:
            return (S.ReduceOnPlateauLR if lib == "fo" else MM.get("ReduceOnPlateauLR"))(o)
        cls = S.StepLR if lib == "fo" else MM.get("StepLR")
        return cls(o, step_size=3, gamma=0.1, last_step=last_step)
    return make


@pytest.mark.parametrize("kind", ["SGD", "FusedSGD"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_step_order_warnings_match_mmengine(scenario, kind):
    seen = {}
    for lib in ("mm", "fo"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            SCENARIOS[scenario](make_opt(kind if lib == "fo" else "SGD"), _maker(lib))
        seen[lib] = _kinds(record)
    assert seen["fo"] == seen["mm"], seen
    expected = {"scheduler-first": {"before"}, "step-replaced": {"replaced"},
                "optimizer-before-build": {"before"},
                "resume-last-step": {"before"}}.get(scenario, set())
    assert seen["fo"] == expected


def test_one_step_counter_for_mmengine_and_fusedopt_schedulers():
    """Both libraries use one counter protocol on the optimizer: mixing them on one optimizer
    neither double-wraps ``step`` nor warns wrongly."""
    opt = make_opt("FusedSGD")
    ours = S.StepLR(opt, step_size=2)
    theirs = MM.get("ExponentialLR")(opt, gamma=0.9)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt.step()
        ours.step()
        theirs.step()
    assert _kinds(record) == set() and opt._global_step == 0
    assert opt.step._with_counter and not hasattr(opt.step.__wrapped__, "_with_counter")


def test_warnings_on_an_optim_wrapper():
    from fusedopt.config import OptimWrapper
    ow = OptimWrapper(make_opt("FusedSGD"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        s = S.StepLR(ow, step_size=2)
        ow.step()                       # counted on the wrapper, as mmengine counts it
        s.step()
    assert _kinds(record) == set() and ow._global_step == 0
    # the counter belongs to this wrapper: copies (and pickles) start without one
    clone = pickle.loads(pickle.dumps(ow))
    assert not hasattr(clone.step, "_with_counter") and ow.step._with_counter


# ---- momentum schedulers on the Adam family ------------------------------------------------------
def _keys_and_values(opt, extra=None):
    """The momentum-related keys of every group (fusedopt's groups have five keys more:
    backend, skip_nonfinite and the precision options master_weights, kahan_sum, state_dtype)."""
    own = ("params", "backend", "skip_nonfinite", "master_weights", "kahan_sum", "state_dtype")
    groups = list(opt.param_groups) + ([extra] if extra is not None else [])
    return [(sorted(k for k in g if k not in own),
             g.get("momentum"), g.get("initial_momentum"), tuple(g["betas"])) for g in groups]


@pytest.mark.parametrize("kind", ["Adam", "FusedAdam"])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("name,cfg", [("LinearMomentum", dict(start_factor=0.5, end=6)),
                                      ("CosineAnnealingMomentum", dict(T_max=5, eta_min=0.5)),
                                      ("StepMomentum", dict(step_size=2, gamma=0.8))])
def test_momentum_on_adam_keeps_group_momentum_and_betas(name, cfg, wrapped, kind):
    from mmengine.optim import OptimWrapper
    ours_opt, mm_opt = make_opt(kind), make_opt("Adam")
    ours_target = OptimWrapper(ours_opt) if wrapped else ours_opt
    mm_target = OptimWrapper(mm_opt) if wrapped else mm_opt
    ours = quiet(getattr(S, name), ours_target, **cfg)
    theirs = quiet(MM.get(name), mm_target, **cfg)
    for t in range(8):
        extra = (ours_target.base_param_settings, mm_target.base_param_settings) if wrapped \
            else (None, None)
        assert _keys_and_values(ours_opt, extra[0]) == _keys_and_values(mm_opt, extra[1]), t
        if wrapped:
            assert ours_target.get_momentum() == mm_target.get_momentum()
        step(ours)
        step(theirs)
    if kind == "FusedAdam":
        from fusedopt import _hparams
        (table,) = ours_opt.hparam_tables.values()
        assert table[:, _hparams.BETA1].tolist() == [g["momentum"] for g in ours_opt.param_groups]


# ---- error types: AssertionError as mmengine, and ValueError/TypeError ------------------------
def _exc(fn):
    try:
        quiet(fn)
    except Exception as e:       # noqa: BLE001
        return e
    raise AssertionError("no exception")


def _build(lib, name, **kw):
    cls = getattr(S, name) if lib == "fo" else MM.get(name)
    return lambda: cls(make_opt("SGD"), **kw)


def _iter(lib, name, **kw):
    cls = getattr(S, name) if lib == "fo" else MM.get(name)
    return lambda: cls.build_iter_from_epoch(make_opt("SGD"), **kw)


ERRORS = {
    "last_step=1.5": lambda lib: _build(lib, "StepLR", step_size=2, last_step=1.5),
    "last_step=-2": lambda lib: _build(lib, "StepLR", step_size=2, last_step=-2),
    "iter-without-epoch_length": lambda lib: _iter(lib, "StepLR", step_size=2),
    "iter-from-iter-based": lambda lib: _iter(lib, "StepLR", step_size=2, by_epoch=False,
                                              epoch_length=4),
    "onecycle-momentum": lambda lib: _build(lib, "OneCycleParamScheduler",
                                            param_name="momentum", eta_max=0.5, total_steps=5),
    "restart-lengths": lambda lib: _build(lib, "CosineRestartLR", periods=[2, 3],
                                          restart_weights=[1], eta_min=0.),
    "eta_min-and-ratio": lambda lib: _build(lib, "CosineAnnealingLR", T_max=3, eta_min=0.,
                                            eta_min_ratio=0.1),
    "plateau-by-iter": lambda lib: _build(lib, "ReduceOnPlateauLR", by_epoch=False),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_types_where_mmengine_asserts(case):
    e_mm = _exc(ERRORS[case]("mm"))
    e_fo = _exc(ERRORS[case]("fo"))
    assert type(e_mm) is AssertionError, e_mm
    assert isinstance(e_fo, AssertionError) and isinstance(e_fo, (ValueError, TypeError)), e_fo


def test_convert_to_iter_based_without_epoch_length():
    cfg = dict(type="StepLR", step_size=2, convert_to_iter_based=True)
    e = _exc(lambda: S.build_param_scheduler(make_opt("SGD"), cfg))
    assert isinstance(e, AssertionError) and isinstance(e, ValueError)
    e_mm = _exc(lambda: MM.get("StepLR").build_iter_from_epoch(make_opt("SGD"), step_size=2))
    assert isinstance(e_mm, AssertionError)


# ---- a scheduler-written out-of-range value ------------------------------------------------------
@pytest.mark.parametrize("writer", ["fo", "mm"])
def test_out_of_range_value_is_checked_by_the_step_that_uses_it(writer):
    """OneCycle (linear) one step past its last phase writes a negative lr, in mmengine and in
    fusedopt alike. Building another scheduler afterwards works (as with torch's SGD); the step
    that would use the value raises, naming the group and the key."""
    cfg = dict(eta_max=0.5, total_steps=10, anneal_strategy="linear")
    ref_opt, opt = make_opt("SGD"), make_opt("FusedSGD")
    ref = quiet(MM.get("OneCycleLR"), ref_opt, **cfg)
    ours = quiet((S.OneCycleLR if writer == "fo" else MM.get("OneCycleLR")), opt, **cfg)
    for _ in range(10):
        for o, s in ((ref_opt, ref), (opt, ours)):
            o.step()
            step(s)
    lrs = [g["lr"] for g in ref_opt.param_groups]
    assert [g["lr"] for g in opt.param_groups] == lrs and min(lrs) < 0
    quiet(MM.get("StepLR"), ref_opt, step_size=2)
    quiet(S.StepLR, opt, step_size=2)               # unrelated: no error here any more
    quiet(MM.get("ExponentialLR"), opt, gamma=0.9)
    ref_opt.step()                                  # torch steps with it
    with pytest.raises(ValueError, match=r"param_groups\[0\]: Invalid learning rate: -.*lr"):
        opt.step()
    for g in opt.param_groups:                      # a valid value again: the step runs
        g["lr"] = 0.01
    opt.step()
