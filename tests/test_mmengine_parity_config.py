"""Issue #15, config layer: fusedopt's standalone layer and its mmengine adapter against
mmengine 0.10, behaviour by behaviour: OptimWrapperDict, registries (trees and scopes,
TORCH_OPTIMIZERS, ZeroRedundancyOptimizer), constructor subclasses, custom_keys entries, the
warnings' route, isinstance, and error types."""
import copy
import logging
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import fusedopt

mmengine = pytest.importorskip("mmengine")
import fusedopt.mmengine as fo_mm  # noqa: E402
from fusedopt import config as fo  # noqa: E402
from mmengine import optim as mm  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import OPTIMIZERS as MM_OPTIMIZERS  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS as MM_SCHEDULERS  # noqa: E402
from mmengine.registry import Registry as MMRegistry  # noqa: E402


def _exc(fn):
    try:
        fn()
    except Exception as e:       # noqa: BLE001
        return e
    raise AssertionError("no exception")


class Net(nn.Module):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 2)
        self.frozen = nn.Linear(1, 1)
        self.frozen.requires_grad_(False)


# ---- OptimWrapperDict ------------------------------------------------------------------------
def _wrappers(lib):
    torch.manual_seed(0)
    m1, m2 = nn.Linear(2, 2), nn.Linear(2, 1)
    ow = mm.OptimWrapper if lib == "mm" else fo.OptimWrapper
    opt2 = (torch.optim.Adam(m2.parameters(), lr=0.2, betas=(0.8, 0.99)) if lib == "mm" else
            fusedopt.FusedAdam(m2.parameters(), lr=0.2, betas=(0.8, 0.99), backend="cpu"))
    groups = [{"params": [m1.weight]}, {"params": [m1.bias], "lr": 0.05}]
    return (m1, m2), dict(gen=ow(torch.optim.SGD(groups, lr=0.1, momentum=0.9)),
                          disc=ow(opt2))


def _train(models, wrappers):
    for _ in range(2):
        for (name, w), m in zip(wrappers.items(), models):
            w.update_params(m(torch.ones(3, 2)).square().sum())


@pytest.mark.parametrize("ours", ["standalone", "adapter"])
def test_optim_wrapper_dict_matches_mmengine(ours):
    cls = fo.OptimWrapperDict if ours == "standalone" else fo_mm.OptimWrapperDict
    (m_mm, w_mm), (m_fo, w_fo) = _wrappers("mm"), _wrappers("fo")
    a, b = mm.OptimWrapperDict(**w_mm), cls(**w_fo)
    assert isinstance(b, fo.OptimWrapper)
    if ours == "adapter":
        assert isinstance(b, mm.OptimWrapperDict)
        assert isinstance(cls(x=w_mm["gen"]), mm.OptimWrapperDict)   # mmengine's wrappers too
    assert list(b.keys()) == list(a.keys()) and len(b) == len(a) == 2
    assert [n for n, _ in b.items()] == ["gen", "disc"] and list(b.values()) == list(w_fo.values())
    assert b["gen"] is w_fo["gen"] and "disc" in b and "nope" not in b
    assert b.get_lr() == a.get_lr() and b.get_momentum() == a.get_momentum()
    assert set(b.param_groups) == set(a.param_groups) == {"gen", "disc"}
    assert "name: gen" in repr(b) and "name: disc" in repr(b)
    _train(m_mm, w_mm)
    _train(m_fo, w_fo)
    b.initialize_count_status(m_fo[0], 1, 1)          # does nothing, as mmengine's
    for (n, p), q in zip(m_mm[0].named_parameters(), m_fo[0].parameters()):
        torch.testing.assert_close(q, p, msg=n)
    state = b.state_dict()
    assert set(state) == {"gen", "disc"}
    assert state["gen"]["param_groups"] == a.state_dict()["gen"]["param_groups"]
    (_, w_new) = _wrappers("fo")
    c = cls(**w_new)
    c.load_state_dict(copy.deepcopy(state))
    assert c.get_lr() == b.get_lr()
    for p in m_fo[1].parameters():
        p.grad = torch.ones_like(p)
    b.zero_grad()
    assert all(p.grad is None for m in m_fo for p in m.parameters())
    for method, args in (("update_params", (1,)), ("backward", (1,)), ("step", ()),
                         ("optim_context", (m_fo[0],))):
        for d in (a, b):
            with pytest.raises(NotImplementedError, match=f"`{method}` should be called"):
                with getattr(d, method)(*args):
                    pass


@pytest.mark.parametrize("ours", ["standalone", "adapter"])
def test_optim_wrapper_dict_errors(ours):
    cls = fo.OptimWrapperDict if ours == "standalone" else fo_mm.OptimWrapperDict
    (_, w_mm), (_, w_fo) = _wrappers("mm"), _wrappers("fo")
    cases = [
        (lambda: mm.OptimWrapperDict(x=w_mm["gen"].optimizer),
         lambda: cls(x=w_fo["gen"].optimizer), TypeError, "`OptimWrapperDict` only accept"),
        (lambda: mm.OptimWrapperDict(**w_mm).load_state_dict({"nope": {}}),
         lambda: cls(**w_fo).load_state_dict({"nope": {}}), KeyError, "cannot found nope"),
        (lambda: mm.OptimWrapperDict(**w_mm)["nope"], lambda: cls(**w_fo)["nope"], KeyError,
         "Cannot find nope"),
    ]
    for theirs, ours_fn, expected, text in cases:
        e_mm, e_fo = _exc(theirs), _exc(ours_fn)
        assert type(e_mm) is AssertionError and text in str(e_mm)
        assert isinstance(e_fo, AssertionError) and isinstance(e_fo, expected), e_fo
        assert text in str(e_fo)


def test_build_param_scheduler_on_optim_wrapper_dict_matches_runner():
    """mmengine's Runner.build_param_scheduler rules: one list per wrapper, from a shared cfg
    or from a dict keyed by wrapper name."""
    from mmengine.runner import Runner
    (_, w_mm), (_, w_fo) = _wrappers("mm"), _wrappers("fo")
    a, b = mm.OptimWrapperDict(**w_mm), fo.OptimWrapperDict(**w_fo)
    runner = SimpleNamespace(optim_wrapper=a, _train_loop=None, train_dataloader=[0] * 4)
    runner._build_param_scheduler = lambda s, ow: Runner._build_param_scheduler(runner, s, ow)
    shared = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
              dict(type="MultiStepLR", milestones=[2], by_epoch=False)]
    per = dict(gen=dict(type="ExponentialLR", gamma=0.5, by_epoch=False),
               disc=[dict(type="StepLR", step_size=2, gamma=0.3, by_epoch=False)])
    for cfg in (shared, per):
        theirs = Runner.build_param_scheduler(runner, copy.deepcopy(cfg))
        ours = fusedopt.build_param_scheduler(b, copy.deepcopy(cfg))
        assert {k: [type(s).__name__ for s in v] for k, v in ours.items()} == \
            {k: [type(s).__name__ for s in v] for k, v in theirs.items()}
        for _ in range(5):
            for group in (*theirs.values(), *ours.values()):
                for s in group:
                    s.step()
            ours_lr, theirs_lr = b.get_lr(), a.get_lr()    # {name.lr: [...]}: per key, as
            assert ours_lr.keys() == theirs_lr.keys()       # pytest 9.2's approx nests no lists
            for key, values in theirs_lr.items():
                assert ours_lr[key] == pytest.approx(values, rel=1e-12), key


# ---- registries ---------------------------------------------------------------------------------
class _X:
    pass


class _X2:
    pass


class _Z:
    pass


class _W:
    def __init__(self, k=0):
        self.k = k


class _V:
    pass


def _tree(cls):
    root = cls("thing", scope="rootpkg")
    a = cls("thing", parent=root, scope="pkga")
    b = cls("thing", parent=root, scope="pkgb")
    c = cls("thing", parent=a, scope="pkgc")
    root.register_module(module=_X)
    a.register_module(name="_X", module=_X2)
    a.register_module(module=_Z)
    b.register_module(module=_W)
    c.register_module(module=_V)
    return dict(root=root, a=a, b=b, c=c)


def test_registry_tree_lookups_match_mmengine():
    theirs, ours = _tree(MMRegistry), _tree(fo.Registry)
    keys = ["_X", "_Z", "_W", "_V", "pkga._X", "pkga._Z", "pkgb._W", "rootpkg._X", "rootpkg._Z",
            "pkgc._V", "pkga._V", "pkgc._X", "nope._X", "pkga.Nope", "Nope"]
    for node in theirs:
        assert ours[node].parent is (None if node == "root" else ours[
            {"a": "root", "b": "root", "c": "a"}[node]])
        assert set(ours[node].children) == set(theirs[node].children)
        for key in keys:
            assert ours[node].get(key) is theirs[node].get(key), (node, key)
            assert (key in ours[node]) == (key in theirs[node]), (node, key)
        for cfg in (dict(type="_W", _scope_="pkgb", k=3), dict(type="_X", _scope_="pkga"),
                    dict(type="_X", _scope_="rootpkg"), dict(type="_Z")):
            t, o = _exc_or_type(theirs[node], cfg), _exc_or_type(ours[node], cfg)
            assert o == t, (node, cfg)
    assert ours["b"].build_func is ours["root"].build_func
    # the scope defaults to the top-level package of the creating module, as mmengine's does
    assert fo.Registry("x").scope == MMRegistry("x").scope == __name__.split(".")[0]


def _exc_or_type(reg, cfg):
    try:
        return type(reg.build(dict(cfg)))
    except Exception as e:       # noqa: BLE001
        return type(e)


def test_child_of_fusedopt_optimizers_builds_through_build_optim_wrapper():
    """mmengine's mechanism for downstream packages, standalone: a child registry with its own
    scope, whose names resolve from the config and whose lookups fall back to fusedopt's."""
    child = fo.Registry("optimizer", parent=fo.OPTIMIZERS, scope="i15pkg")
    try:
        @child.register_module()
        class MySGD(torch.optim.SGD):
            pass
        assert child.get("SGD") is torch.optim.SGD and child.get("FusedAdam") is fusedopt.FusedAdam
        assert fo.OPTIMIZERS.get("i15pkg.MySGD") is MySGD and fo.OPTIMIZERS.get("MySGD") is None
        ow = fusedopt.build_optim_wrapper(Net(), dict(optimizer=dict(type="i15pkg.MySGD", lr=0.1)))
        assert type(ow.optimizer) is MySGD
        e = _exc(lambda: fo.OPTIMIZERS.build(dict(type="i15pkg.MySDG", params=[])))
        assert isinstance(e, KeyError) and "'MySGD'" in str(e)
        MMRegistry("o", parent=MM_OPTIMIZERS, scope="mmengine_i15")
        e_mm = _exc(lambda: MMRegistry("o", parent=MM_OPTIMIZERS, scope="mmengine_i15"))
        e_fo = _exc(lambda: fo.Registry("o", parent=fo.OPTIMIZERS, scope="i15pkg"))
        assert type(e_mm) is AssertionError
        assert isinstance(e_fo, AssertionError) and isinstance(e_fo, ValueError)
        e_fo = _exc(lambda: fo.Registry("o", parent=MM_OPTIMIZERS))
        e_mm = _exc(lambda: MMRegistry("o", parent=fo.OPTIMIZERS))
        assert type(e_mm) is AssertionError
        assert isinstance(e_fo, AssertionError) and isinstance(e_fo, TypeError)
    finally:
        fo.OPTIMIZERS._children.pop("i15pkg", None)
        MM_OPTIMIZERS._children.pop("mmengine_i15", None)


def test_torch_optimizers_list_and_registry_match_mmengine():
    from fusedopt.config.builder import TORCH_OPTIMIZERS
    from mmengine.optim.optimizer.builder import TORCH_OPTIMIZERS as MM_TORCH
    assert TORCH_OPTIMIZERS == MM_TORCH and fo.TORCH_OPTIMIZERS is TORCH_OPTIMIZERS
    for name in MM_OPTIMIZERS.module_dict:
        if name in fo.OPTIMIZERS.module_dict and name in MM_TORCH + ["TorchAdafactor"]:
            assert fo.OPTIMIZERS.get(name) is MM_OPTIMIZERS.get(name), name
    assert all(name in fo.OPTIMIZERS for name in MM_TORCH)


@pytest.fixture
def one_process_group():
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch without torch.distributed")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
def test_zero_redundancy_optimizer_matches_mmengine():
    w = torch.randn(4, 3)
    results = {}
    for name, registry, opt_type in (("mm", MM_OPTIMIZERS, "SGD"), ("fo", fo.OPTIMIZERS, "SGD"),
                                     ("fo-fused", fo.OPTIMIZERS, "FusedSGD"),
                                     ("adapter", MM_OPTIMIZERS, "FusedSGD")):
        p = nn.Parameter(w.clone())
        typ = "fusedopt.ZeroRedundancyOptimizer" if name == "adapter" else "ZeroRedundancyOptimizer"
        opt = registry.build(dict(type=typ, optimizer_type=opt_type, params=[p], lr=0.1,
                                  momentum=0.9))
        assert isinstance(opt, torch.distributed.optim.ZeroRedundancyOptimizer)
        for i in range(3):
            p.grad = torch.full_like(p, i + 1.0)
            opt.step()
        results[name] = (p.detach().clone(), opt.state_dict())
    for name in ("fo", "fo-fused", "adapter"):
        torch.testing.assert_close(results[name][0], results["mm"][0], rtol=0, atol=0)
        assert set(results[name][1]) == set(results["mm"][1])
    e = _exc(lambda: fo.OPTIMIZERS.build(dict(type="ZeroRedundancyOptimizer",
                                              optimizer_type="FusedSDG", params=[])))
    assert isinstance(e, KeyError) and isinstance(e, TypeError) and "'FusedSGD'" in str(e)


def test_zero_redundancy_optimizer_is_imported_lazily():
    import subprocess
    import sys
    code = ("import sys, fusedopt\n"
            "from fusedopt.config import OPTIMIZERS\n"
            "assert OPTIMIZERS.get('FusedAdam') is fusedopt.FusedAdam\n"
            "assert 'torch.distributed.optim' not in sys.modules\n"
            "zero = OPTIMIZERS.get('ZeroRedundancyOptimizer')\n"
            "assert zero.__name__ == 'ZeroRedundancyOptimizer'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---- constructor subclasses and custom_keys entries ----------------------------------------------
def _subclass(base, declare=None):
    class MyConstructor(base):
        if declare is not None:
            paramwise_keys = base.paramwise_keys + declare

        def __call__(self, model):
            mult = self.paramwise_cfg.get("conv1_lr_mult", 1.)
            params = [{"params": [p], **({"lr": self.base_lr * mult}
                                          if n.startswith("conv1") else {})}
                      for n, p in model.named_parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=self.base_lr, momentum=0.9)
    return MyConstructor


def test_constructor_subclass_with_its_own_paramwise_keys():
    cfg = dict(optim_wrapper_cfg=dict(optimizer=dict(type="SGD", lr=0.01)),
               paramwise_cfg=dict(conv1_lr_mult=5))
    theirs = _subclass(mm.DefaultOptimWrapperConstructor)(**copy.deepcopy(cfg))(Net())
    for declare in (None, ("conv1_lr_mult",)):      # mmengine's subclass, and a declaring one
        ours = _subclass(fo.DefaultOptimWrapperConstructor, declare)(**copy.deepcopy(cfg))(Net())
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    # typo protection stays: the default constructor, a subclass that only adds behaviour
    # elsewhere, and a declaring subclass all reject a key nobody reads
    bad = dict(cfg, paramwise_cfg=dict(conv1_lr_mul=5))

    class Plain(fo.DefaultOptimWrapperConstructor):
        pass
    for cls in (fo.DefaultOptimWrapperConstructor, Plain,
                _subclass(fo.DefaultOptimWrapperConstructor, ("conv1_lr_mult",))):
        with pytest.raises(ValueError, match="'conv1_lr_mul' \\(did you mean 'conv1_lr_mult'"
                           if cls is not fo.DefaultOptimWrapperConstructor and cls is not Plain
                           else "'conv1_lr_mul'"):
            cls(**copy.deepcopy(bad))


def _group_settings(ow):
    return [{k: v for k, v in g.items() if k != "params"} for g in ow.optimizer.param_groups]


def test_custom_keys_entries_pass_through_like_mmengine():
    """Issue #26: every key of an entry goes into the group, as mmengine copies it (lars_exclude
    for LARS, SimSiam's fix_lr, per-group optimizer arguments); a near-miss of a multiplier
    raises (mmengine copies it too, and the multiplier it was meant to be never applies)."""
    good = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4),
                paramwise_cfg=dict(custom_keys={
                    "head": dict(lr_mult=0.5, momentum=0.5, decay_mult=0.),
                    "bn": dict(decay_mult=0, lars_exclude=True), "conv1": dict(fix_lr=True)}))
    a = mm.build_optim_wrapper(Net(), copy.deepcopy(good))
    b = fusedopt.build_optim_wrapper(Net(), copy.deepcopy(good))
    assert _group_settings(a) == _group_settings(b)
    assert any(g.get("lars_exclude") for g in _group_settings(b))
    bad = copy.deepcopy(good)
    bad["paramwise_cfg"]["custom_keys"] = {"bias": dict(lr_mul=0.)}
    mm.build_optim_wrapper(Net(), copy.deepcopy(bad))         # mmengine: silently no multiplier
    with pytest.raises(ValueError, match=r"custom_keys\['bias'\].*'lr_mul' \(did you mean "
                                         r"'lr_mult'\?\)") as e:
        fusedopt.build_optim_wrapper(Net(), copy.deepcopy(bad))
    assert isinstance(e.value, AssertionError)


def test_delete_slip_builds_like_mmengine():
    """mmpretrain's Twins configs: paramwise_cfg has `_delete=True` (mmengine's Config reads
    `_delete_`); mmengine's constructor ignores the key, fusedopt's warns and ignores it."""
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
               paramwise_cfg=dict(_delete=True, norm_decay_mult=0.0, bias_decay_mult=0.0))
    a = mm.build_optim_wrapper(Net(), copy.deepcopy(cfg))
    b = fusedopt.build_optim_wrapper(Net(), copy.deepcopy(cfg))
    assert _group_settings(a) == _group_settings(b)


# ---- warnings through mmengine's logger (adapter) --------------------------------------------
@contextmanager
def records(logger):
    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records = []

        def emit(self, record):
            self.records.append(record)
    handler = Keep()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def _messages(recs):
    return [(r.levelno, r.getMessage()) for r in recs]


def test_adapter_logs_through_mmengine_logger():
    logger = MMLogger.get_instance("fusedopt_i15_parity")    # the current instance now
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4),
               paramwise_cfg=dict(norm_decay_mult=0., bypass_duplicate=True), clip_grad=None,
               accumulative_counts=3)
    with records(logger) as theirs:
        ow = mm.build_optim_wrapper(Net(), copy.deepcopy(cfg))
        ow.initialize_count_status(Net(), 2, 10)
    with records(logger) as ours:
        ow = mm.build_optim_wrapper(Net(), dict(
            copy.deepcopy(cfg), type="fusedopt.OptimWrapper",
            constructor="fusedopt.DefaultOptimWrapperConstructor"))
        assert type(ow) is fo_mm.OptimWrapper
        ow.initialize_count_status(Net(), 2, 10)
    t, o = _messages(theirs), _messages(ours)
    assert [m for m in o if m[0] == logging.INFO] == [m for m in t if m[0] == logging.INFO]
    tw, ow_ = [m for m in t if m[0] >= logging.WARNING], [m for m in o if m[0] >= logging.WARNING]
    assert len(tw) == len(ow_) == 4       # frozen weight and bias, resumed count, BatchNorm
    for (lt, mt), (lo, mo) in zip(tw, ow_):
        assert lo == lt and mo[:40] == mt[:40]
    with records(logger) as amp:
        fo_mm.AmpOptimWrapper(optimizer=torch.optim.SGD(Net().parameters(), lr=0.1),
                              dtype="bfloat16", accumulative_counts=2).initialize_count_status(
            Net(), 0, 10)                                    # BatchNorm + accumulation
    assert [lvl for lvl, m in _messages(amp) if "BatchNorm" in m] == [logging.WARNING]
    # verbose schedulers registered for mmengine print through its logger too
    verbose = {}
    for name, cls in (("mm", MM_SCHEDULERS.get("StepLR")),
                      ("fo", fo_mm.PARAM_SCHEDULERS.get("fusedopt.StepLR"))):
        opt = torch.optim.SGD(Net().parameters(), lr=0.1)
        with records(logger) as recs:
            s = cls(opt, step_size=1, gamma=0.5, verbose=True)
            opt.step()
            s.step()
        verbose[name] = _messages(recs)
    assert verbose["fo"] == verbose["mm"] and len(verbose["mm"]) == 2


# ---- isinstance ---------------------------------------------------------------------------------
def test_fused_optimizers_are_torch_optimizer_instances():
    params = [nn.Parameter(torch.zeros(2))]
    for fused, plain in ((fusedopt.FusedSGD, torch.optim.SGD),
                         (fusedopt.FusedAdam, torch.optim.Adam),
                         (fusedopt.FusedAdamW, torch.optim.AdamW)):
        a, b = fused(params, backend="cpu"), plain(params)
        for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Optimizer):
            assert isinstance(a, cls) == isinstance(b, cls), (fused, cls)
    # mmengine's classes with fusedopt's optimizers: what its own tests check
    ow = mm.build_optim_wrapper(Net(), dict(optimizer=dict(type="fusedopt.FusedSGD", lr=0.1,
                                                           momentum=0.9)))
    assert isinstance(ow.optimizer, torch.optim.SGD) and ow.get_momentum() == dict(momentum=[0.9])


# ---- issue #17 item 7: a misspelt fusedopt type inside mmengine ----------------------------------
def test_misspelt_fusedopt_type_in_mmengine_says_did_you_mean():
    cfg = dict(optimizer=dict(type="fusedopt.FusedAdamm", lr=1e-3))
    e = _exc(lambda: mm.build_optim_wrapper(Net(), copy.deepcopy(cfg)))
    assert isinstance(e, TypeError) and isinstance(e, KeyError)   # mmengine's was a TypeError
    assert "Did you mean: 'FusedAdam'" in str(e)
    assert "FusedAdamm" not in fo_mm.OPTIMIZERS and "SGD" in fo_mm.OPTIMIZERS
    e = _exc(lambda: mm.build_optim_wrapper(Net(), dict(type="fusedopt.OptimWraper",
                                                        optimizer=dict(type="SGD", lr=0.1))))
    assert isinstance(e, KeyError) and "Did you mean: 'OptimWrapper'" in str(e)
    # mmengine's root registry is untouched: a plain typo ends as it always did
    e = _exc(lambda: mm.build_optim_wrapper(Net(), dict(optimizer=dict(type="SDG", lr=0.1))))
    assert type(e) is TypeError and "not a callable object" in str(e)


# ---- error types: AssertionError as mmengine, and ValueError/TypeError ------------------------
CONFIG_ERRORS = [
    dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=[]),
    dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(type="norm")),
    dict(optimizer=dict(type="SGD", lr=0.1), accumulative_counts=0),
    dict(type="AmpOptimWrapper", optimizer=dict(type="SGD", lr=0.1), dtype="float8"),
    dict(type="AmpOptimWrapper", optimizer=dict(type="SGD", lr=0.1), dtype=3),
    dict(lr=0.1),
]


@pytest.mark.parametrize("cfg", CONFIG_ERRORS)
def test_config_error_types_where_mmengine_asserts(cfg):
    e_mm = _exc(lambda: mm.build_optim_wrapper(Net(), copy.deepcopy(cfg)))
    e_fo = _exc(lambda: fusedopt.build_optim_wrapper(Net(), copy.deepcopy(cfg)))
    assert type(e_mm) is AssertionError, e_mm
    assert isinstance(e_fo, AssertionError) and isinstance(e_fo, (ValueError, TypeError)), e_fo
    if "clip_grad" in cfg:         # mmengine's wording, capital letter included
        assert str(e_mm)[:60] in str(e_fo)


def test_registered_schedulers_resolve_alike():
    """Every scheduler name mmengine registers, fusedopt registers (standalone and adapter)."""
    import mmengine.optim.scheduler  # noqa: F401
    for name in MM_SCHEDULERS.module_dict:
        if name.startswith("_") or not name.endswith(("LR", "Momentum", "ParamScheduler")):
            continue
        assert fo.PARAM_SCHEDULERS.get(name) is not None, name
        assert issubclass(fo_mm.PARAM_SCHEDULERS.get(f"fusedopt.{name}"),
                          mmengine.optim.scheduler.param_scheduler._ParamScheduler), name
