"""The hyper-parameter tables follow the param_group dicts (issue 20, Note [one truth] in
fusedopt/_hparams.py): tables written in place at stable addresses, a written group costing O(1)
at the next step, every way of reading param_groups showing what the next step uses, checks
naming the group and key, tensor values copied on the device, linear-time construction."""
import copy
import pickle
import sys

import pytest
import torch

import fusedopt
from fusedopt import _ext, _hparams
from conftest import CPU_BACKENDS
from tolerances import assert_close

FUSED = {"AdamW": fusedopt.FusedAdamW, "Adam": fusedopt.FusedAdam, "SGD": fusedopt.FusedSGD}
TORCH = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD}
KWARGS = {"AdamW": {}, "Adam": dict(weight_decay=0.01), "SGD": dict(momentum=0.9)}


def groups_of(params, lrs=None):
    return [{"params": [p], "lr": 0.01 * (1 + i % 3) if lrs is None else lrs[i]}
            for i, p in enumerate(params)]


def make(algo, groups=4, numel=3, backend="auto", **kwargs):
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(groups)]
    opt = FUSED[algo](groups_of(params), backend=backend, **{**KWARGS[algo], **kwargs})
    for p in params:
        p.grad = torch.randn(numel)
    opt.step()
    return params, opt


def table(opt):
    (t,) = opt.hparam_tables.values()
    return t


# ---- the repro: every way of reading param_groups ------------------------------------
def wrappers():
    out = [("fusedopt", lambda o: fusedopt.OptimWrapper(o))]
    try:
        import mmengine.optim  # noqa: F401
        import fusedopt.mmengine as fm
        out += [("fusedopt.mmengine", lambda o: fm.OptimWrapper(o)),
                ("mmengine", lambda o: mmengine.optim.OptimWrapper(o))]
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("name,wrap", wrappers(), ids=[n for n, _ in wrappers()])
def test_wrapper_param_groups_show_the_scheduled_lr(name, wrap):
    m = torch.nn.Linear(2, 2)
    o = fusedopt.FusedSGD([{"params": [m.weight]}, {"params": [m.bias]}], lr=0.05)
    w = wrap(o)
    fusedopt.schedulers.LinearLR(w, start_factor=0.5, end=4)
    assert w.param_groups[0]["lr"] == o.param_groups[0]["lr"] == 0.025
    assert w.param_groups[1]["lr"] == 0.025


def test_every_way_of_reading_param_groups_shows_the_next_steps_values():
    _, opt = make("AdamW", groups=5)
    scheds = fusedopt.build_param_scheduler(opt, [
        dict(type="CosineAnnealingLR", T_max=7, by_epoch=False),
        dict(type="ExponentialMomentum", gamma=0.9, by_epoch=False)])
    for _ in range(3):
        for s in scheds:
            s.step()
    t = table(opt)
    lrs, beta1s = t[:, _hparams.LR].tolist(), t[:, _hparams.BETA1].tolist()
    groups = opt.param_groups
    routes = {
        "index": [groups[i] for i in range(len(groups))],
        "iteration": list(iter(groups)),
        "concatenation": groups + [],
        "copy": copy.copy(groups),
        "deepcopy": copy.deepcopy(groups),
        "pickle": pickle.loads(pickle.dumps(groups)),
        "state_dict": opt.state_dict()["param_groups"],
    }
    for route, seen in routes.items():
        assert [g["lr"] for g in seen] == lrs, route
        assert [g["betas"][0] for g in seen] == beta1s, route
    # and they are what the step uses: the same steps on torch's AdamW from the dicts' values
    assert lrs != [0.01 * (1 + i % 3) for i in range(5)]


# ---- tables written in place, row by row -------------------------------------------------------
@pytest.mark.parametrize("algo", list(FUSED))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_group_write_keeps_the_table_address(algo, backend):
    params, opt = make(algo, groups=6, backend=backend)
    t = table(opt)
    address = t.data_ptr()
    opt.param_groups[3]["lr"] = 0.5
    opt.param_groups[4]["weight_decay"] = 0.25
    opt.step()
    assert table(opt) is t and t.data_ptr() == address
    assert t[3, _hparams.LR].item() == 0.5 and t[4, _hparams.WEIGHT_DECAY].item() == 0.25
    fusedopt.schedulers.ExponentialLR(opt, gamma=0.5, by_epoch=False).step()   # a column write
    opt.set_hparam("lr", [0.1] * 6)
    opt.step()
    assert table(opt) is t and t.data_ptr() == address
    assert t[:, _hparams.LR].tolist() == [0.1] * 6


def test_writes_between_steps_all_reach_the_table():
    """Note [dict versions]: a group whose dict changed is compared in full, whoever wrote it,
    and a pair kept in a list (its items change without the dict changing) at every step."""
    params, opt = make("AdamW", groups=4)
    t = table(opt)
    opt.param_groups[1]["weight_decay"] = 0.5         # a write, then a column write over it
    opt.set_hparam("lr", [0.1, 0.2, 0.3, 0.4])
    opt.param_groups[2]["initial_lr"] = 1.0           # an unwatched key
    opt.param_groups[3]["betas"] = [0.8, 0.99]
    opt.step()
    assert t[:, _hparams.LR].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert t[1, _hparams.WEIGHT_DECAY].item() == 0.5 and t[3, _hparams.BETA1].item() == 0.8
    opt.param_groups[3]["betas"][0] = 0.7
    opt.step()
    assert t[3, _hparams.BETA1].item() == 0.7
    fusedopt.schedulers.ExponentialMomentum(opt, gamma=0.5, by_epoch=False).step()
    opt.param_groups[0]["eps"] = 1e-3
    opt.step()
    assert t[:, _hparams.BETA1].tolist() == [g["betas"][0] for g in opt.param_groups]
    assert t[0, _hparams.EPS].item() == 1e-3


def _python_calls(fn):
    """Python function calls and C calls made from Python while ``fn`` runs."""
    count = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count[0]


# a write the C++ scan leaves to Python: a pair, a flag
REREAD_WRITE = {"Adam": ("betas", (0.8, 0.99)), "AdamW": ("betas", (0.8, 0.99)),
                "SGD": ("nesterov", False)}


@pytest.mark.skipif(_ext.C is None, reason="the O(1) scan is fusedopt._C's (without it, "
                    "_hparams._PyWatch compares every group in Python)")
@pytest.mark.parametrize("algo", list(FUSED))
def test_a_write_to_one_group_costs_o1_at_the_next_step(algo):
    """A step after writing one group's lr (or nothing) makes the same number of Python calls
    for 10 groups and for 1000: no re-check of clean groups, no scan of the parameters."""
    counts = {}
    for groups in (10, 1000):
        params, opt = make(algo, groups=groups)
        opt.step()
        counts[groups, "none"] = _python_calls(opt.step)
        opt.param_groups[groups // 2]["lr"] = 0.123
        counts[groups, "one"] = _python_calls(opt.step)
        assert table(opt)[groups // 2, _hparams.LR].item() == 0.123
        key, value = REREAD_WRITE[algo]
        opt.param_groups[groups // 2][key] = value      # a row Python re-reads
        counts[groups, "row"] = _python_calls(opt.step)
    for kind in ("none", "one", "row"):
        assert counts[10, kind] == counts[1000, kind], (kind, counts)


def test_add_param_group_costs_o1_per_group():
    """Note [linear construction]: adding a group checks it against the params seen so far
    without rebuilding a set from every earlier group (torch's check is quadratic)."""
    counts = []
    for groups in (10, 1000):
        opt = fusedopt.FusedAdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]}
                                   for _ in range(groups)])
        p = torch.nn.Parameter(torch.zeros(1))
        counts.append(_python_calls(lambda: opt.add_param_group({"params": [p]})))
    assert counts[0] == counts[1], counts


def test_add_param_group_keeps_torchs_checks():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = fusedopt.FusedSGD([{"params": [a]}], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="non-leaf"):
        opt.add_param_group({"params": [b * 2]})
    with pytest.raises(TypeError, match="only optimize Tensors"):
        opt.add_param_group({"params": [1.0]})
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt.add_param_group({"params": [b, b]})
    named = fusedopt.FusedSGD([("w", a)], lr=0.1)
    assert named.param_groups[0]["param_names"] == ["w"]
    with pytest.raises(ValueError, match="with/without names"):
        named.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 2 and type(opt.param_groups[1]) is dict


# ---- the steps use what the dicts say ----------------------------------------------------------
@pytest.mark.parametrize("algo", list(FUSED))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_scheduler_writes_reach_the_step(algo, backend):
    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(5)) for _ in range(4)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    o = FUSED[algo](groups_of(ours), backend=backend, **KWARGS[algo])
    t = TORCH[algo](groups_of(theirs), foreach=False, **KWARGS[algo])
    so = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5)
    st = torch.optim.lr_scheduler.CosineAnnealingLR(t, T_max=5)
    for step in range(8):
        g = [torch.randn(5) for _ in ours]
        for p, q, x in zip(ours, theirs, g):
            p.grad, q.grad = x.clone(), x.clone()
        if step == 4:                                   # a user write between scheduler steps
            o.param_groups[2]["lr"] = t.param_groups[2]["lr"] = 0.3
        o.step()
        t.step()
        so.step()
        st.step()
    for p, q in zip(ours, theirs):
        assert_close(p.detach(), q.detach(), f"{algo} {backend}")
    assert [g["lr"] for g in o.param_groups] == [g["lr"] for g in t.param_groups]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_tensor_lr_is_read_at_every_step(backend):
    """torch's schedulers fill_ a tensor lr in place: the step copies it on the device."""
    torch.manual_seed(2)
    ours = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    lr_o, lr_t = torch.tensor(0.01), torch.tensor(0.01)
    o = fusedopt.FusedAdamW([{"params": ours[:2], "lr": lr_o}, {"params": ours[2:]}],
                            backend=backend)
    t = torch.optim.AdamW([{"params": theirs[:2], "lr": lr_t}, {"params": theirs[2:]}],
                          foreach=False)
    for step in range(6):
        for p, q in zip(ours, theirs):
            x = torch.randn(4)
            p.grad, q.grad = x.clone(), x.clone()
        o.step()
        t.step()
        lr_o.fill_(0.01 * 0.5 ** step)
        lr_t.fill_(0.01 * 0.5 ** step)
    for p, q in zip(ours, theirs):
        assert_close(p.detach(), q.detach(), backend)
    assert table(o)[0, _hparams.LR].item() == lr_o.item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_writing_a_flag_regroups(backend):
    """momentum 0 -> 0.9 written into a dict: the next step keeps buffers, as torch does."""
    torch.manual_seed(3)
    ours = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    o = fusedopt.FusedSGD(groups_of(ours), backend=backend)
    t = torch.optim.SGD(groups_of(theirs), foreach=False)
    for step in range(5):
        for p, q in zip(ours, theirs):
            x = torch.randn(4)
            p.grad, q.grad = x.clone(), x.clone()
        if step == 2:
            for opt in (o, t):
                opt.param_groups[1]["momentum"] = 0.9
        o.step()
        t.step()
    for p, q in zip(ours, theirs):
        assert_close(p.detach(), q.detach(), backend)
    assert "momentum_buffer" in o.state[ours[1]]


@pytest.mark.parametrize("algo", list(FUSED))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_writing_master_weights_regroups(algo, backend):
    """master_weights is a flag key too (Note [master copy]): written into a bf16 group's dict,
    the next step makes the fp32 copy and steps it; written back to False, the copy is dropped.
    The same steps as an optimizer built with the option at that point."""
    torch.manual_seed(4)
    ours = [torch.nn.Parameter(torch.randn(6).bfloat16()) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    o = FUSED[algo](groups_of(ours), backend=backend)
    for step in range(4):
        if step == 2:
            o.param_groups[1]["master_weights"] = True
            t = FUSED[algo](groups_of(theirs), backend=backend, master_weights=True)
            t.load_state_dict(copy.deepcopy(o.state_dict()))   # masters made from the params
        for p, q in zip(ours, theirs):
            x = torch.randn(6).bfloat16()
            p.grad, q.grad = x.clone(), x.clone()
        o.step()
        if step >= 2:
            t.step()
        else:
            for q, p in zip(theirs, ours):
                q.data.copy_(p.detach())
    assert "master_param" not in o.state[ours[0]]
    master = o.state[ours[1]]["master_param"]
    assert master.dtype == torch.float32 and torch.equal(master, t.state[theirs[1]]["master_param"])
    for p, q in zip(ours, theirs):
        assert torch.equal(p.detach(), q.detach())
    o.param_groups[1]["master_weights"] = False
    ours[1].grad = torch.ones(6).bfloat16()
    o.step()
    assert "master_param" not in o.state[ours[1]]


# ---- checks where the value is written, or at the next step ------------------------------------
@pytest.mark.parametrize("write,match", [
    # torch's wording for the value, then the key (Note [range checks where values are used])
    (lambda g: g.__setitem__("lr", -1.0),
     r"param_groups\[2\]: Invalid learning rate: -1.0; expected lr "),
    (lambda g: g.__setitem__("betas", (0.9, 1.5)),
     r"param_groups\[2\]: Invalid beta parameter at index 1: 1.5; expected betas\[1\] "),
    (lambda g: g.__setitem__("eps", "small"),
     r"param_groups\[2\]: Invalid epsilon value: 'small'; expected eps "),
    (lambda g: g.pop("weight_decay"), r"param_groups\[2\] has no 'weight_decay'"),
], ids=["negative lr", "beta2 >= 1", "eps not a number", "missing key"])
def test_a_bad_write_is_named_at_the_next_step(write, match):
    params, opt = make("AdamW", groups=4)
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    write(opt.param_groups[2])
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(torch.equal(v, state[i][k]) for i, s in opt.state_dict()["state"].items()
               for k, v in s.items())


def test_a_scheduler_names_a_malformed_group_of_another_optimizer():
    opt = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(3)])
    sched = fusedopt.schedulers.ExponentialMomentum(opt, gamma=0.5, by_epoch=False)
    opt.param_groups[1]["betas"] = 0.9
    with pytest.raises(TypeError, match=r"param_groups\[1\]"):
        sched.step()
    assert [g["betas"] for g in opt.param_groups[::2]] == [(0.9, 0.999)] * 2


def test_set_hparam_checks_before_writing():
    params, opt = make("SGD", groups=3, nesterov=True)
    dicts = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    t = table(opt).clone()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        opt.set_hparam("lr", [0.1, -0.1, 0.1])
    with pytest.raises(ValueError, match="nesterov"):
        opt.set_hparam("momentum", [0.9, 0.0, 0.9])
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == dicts
    assert torch.equal(table(opt), t)


# ---- stable addresses under capture (the CUDA side is in tests/test_cuda.py) -------------------
def test_regrouping_after_a_captured_step_raises_once():
    params, opt = make("AdamW", groups=3)
    opt._hparams.captured = True         # what a step under torch.cuda.graph records
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    with pytest.raises(RuntimeError, match="captured in a CUDA graph"):
        opt.step()
    before = [p.detach().clone() for p in params]
    opt.step()                           # said once: the next step regroups
    assert not all(torch.equal(p, q) for p, q in zip(params, before))


# ---- the C++ watcher and its Python twin agree -----------------------------------------------
@pytest.mark.skipif(_ext.C is None, reason="needs fusedopt._C")
def test_python_watch_matches_the_extension():
    """The same writes seen by csrc/param_groups.cpp and by _hparams._PyWatch (the fallback
    without the extension): the same cells written, the same rows left to Python."""
    def build(watch_cls):
        groups = [dict(lr=0.1 * (i + 1), weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                       amsgrad=False, maximize=False, decoupled_weight_decay=True)
                  for i in range(6)]
        watch = watch_cls(_hparams.watched(fusedopt.FusedAdamW._COLUMNS,
                                           fusedopt.FusedAdamW._FLAG_KEYS), _hparams.NUM_COLS)
        host = torch.zeros(6, _hparams.NUM_COLS, dtype=torch.float64)
        watch.reset(groups)
        return groups, watch, host

    writes = [lambda g: g[0].__setitem__("lr", 0.5),
              lambda g: g[1].__setitem__("betas", (0.8, 0.999)),
              lambda g: g[2].__setitem__("lr", torch.tensor(0.2)),
              lambda g: g[3].__setitem__("amsgrad", True),
              lambda g: g[4].__setitem__("eps", float("nan")),
              lambda g: g.__setitem__(5, dict(g[5])),
              lambda g: g[5].__setitem__("weight_decay", 3)]
    seen = []
    for watch_cls in (_ext.C.GroupWatch, _hparams._PyWatch):
        groups, watch, host = build(watch_cls)
        out = []
        for w in writes:
            w(groups)
            found = watch.scan(groups, host)
            out.append(None if found is None else (sorted(found[0]), sorted(found[1])))
        values = torch.arange(6, dtype=torch.float64) / 10
        out.append(watch.write(groups, 0, values, host))
        out.append(watch.scan(groups, host))
        out.append(host.tolist())
        out.append([g["lr"] for g in groups])
        seen.append(out)
    assert seen[0] == seen[1]
