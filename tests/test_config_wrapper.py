"""OptimWrapper / AmpOptimWrapper: accumulation, clipping (fused), AMP (fused), state, bad input."""
import contextlib

import pytest
import torch
from torch import nn

import fusedopt
from fusedopt import AmpOptimWrapper, OptimWrapper, build_optim_wrapper


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 3, generator=g)


def loss_fn(m, x, y):
    return (m(x) - y).pow(2).mean()


def max_diff(m1, m2):
    return max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))


# ---- accumulation ------------------------------------------------------------------------------
def test_accumulation_counters_and_loss_factor():
    m = make_model()
    ow = OptimWrapper(fusedopt.FusedSGD(m.parameters(), lr=0.1), accumulative_counts=3)
    ow.initialize_count_status(m, 0, 7)          # 7 iters: 3 + 3 + remainder 1
    x, y = data()
    factors, updates, syncs = [], [], []
    for i in range(7):
        syncs.append(ow.should_sync())
        loss = loss_fn(m, x, y)
        factors.append(round(float((loss / ow.scale_loss(loss)).detach()), 6))
        ow.update_params(loss)
        updates.append(ow.should_update())
    assert factors == [3, 3, 3, 3, 3, 3, 1]
    assert updates == [False, False, True, False, False, True, True]
    assert syncs == [False, False, True, False, False, True, True]
    assert ow.inner_count == 7


def test_accumulation_equals_big_batch():
    x, y = data(32)
    m1 = make_model()
    big = OptimWrapper(fusedopt.FusedSGD(m1.parameters(), lr=0.1, momentum=0.9))
    m2 = make_model()
    acc = OptimWrapper(fusedopt.FusedSGD(m2.parameters(), lr=0.1, momentum=0.9),
                       accumulative_counts=4)
    for _ in range(3):
        big.update_params(loss_fn(m1, x, y))
        for xs, ys in zip(x.chunk(4), y.chunk(4)):
            acc.update_params(loss_fn(m2, xs, ys))
    assert max_diff(m1, m2) < 1e-5


def test_optim_context_uses_no_sync_on_accumulation_iters():
    calls = []

    class DDPLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = make_model()

        @contextlib.contextmanager
        def no_sync(self):
            calls.append("no_sync")
            yield

    model = DDPLike()
    ow = OptimWrapper(fusedopt.FusedSGD(model.parameters(), lr=0.1), accumulative_counts=2)
    x, y = data()
    pattern = []
    for _ in range(4):
        n = len(calls)
        with ow.optim_context(model):
            loss = loss_fn(model.module, x, y)
        ow.update_params(loss)
        pattern.append(len(calls) > n)
    assert pattern == [True, False, True, False]


# ---- clipping ----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_fused_norm_clip_matches_torch(norm_type, monkeypatch):
    x, y = data()
    m1 = make_model()
    ref = torch.optim.AdamW(m1.parameters(), lr=1e-2, weight_decay=1e-2)
    m2 = make_model()
    ow = build_optim_wrapper(m2, dict(optimizer=dict(type="FusedAdamW", lr=1e-2, weight_decay=1e-2),
                                      clip_grad=dict(max_norm=0.3, norm_type=norm_type)))

    def not_torch(*a, **k):
        raise AssertionError("fused path must not call torch's clip_grad_norm_")
    for i in range(5):
        loss_fn(m1, x, y).backward()
        n1 = torch.nn.utils.clip_grad_norm_(m1.parameters(), 0.3, norm_type)
        ref.step()
        ref.zero_grad()
        with monkeypatch.context() as mp:
            mp.setattr(torch.nn.utils, "clip_grad_norm_", not_torch)
            ow.update_params(loss_fn(m2, x, y))
        assert isinstance(ow.last_grad_norm, torch.Tensor) and ow.last_grad_norm.dim() == 0
        torch.testing.assert_close(ow.last_grad_norm, n1, rtol=1e-5, atol=1e-6)
    assert max_diff(m1, m2) < 1e-5


def test_value_clip_matches_torch():
    x, y = data()
    m1 = make_model()
    ref = torch.optim.SGD(m1.parameters(), lr=0.1, momentum=0.9)
    m2 = make_model()
    ow = build_optim_wrapper(m2, dict(optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9),
                                      clip_grad=dict(type="value", clip_value=0.01)))
    for _ in range(4):
        loss_fn(m1, x, y).backward()
        torch.nn.utils.clip_grad_value_(m1.parameters(), 0.01)
        ref.step()
        ref.zero_grad()
        ow.update_params(loss_fn(m2, x, y))
    assert max_diff(m1, m2) < 1e-6


def test_torch_optimizer_clip_path():
    x, y = data()
    m = make_model()
    ow = build_optim_wrapper(m, dict(optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(max_norm=0.1)))
    ow.update_params(loss_fn(m, x, y))
    assert isinstance(ow.last_grad_norm, torch.Tensor)


class FakeHub:
    def __init__(self):
        self.log = []

    def update_scalar(self, key, value):
        assert isinstance(value, float)
        self.log.append((key, value))


def test_grad_norm_logging_eager_and_lazy():
    x, y = data()
    m = make_model()
    ow = build_optim_wrapper(m, dict(optimizer=dict(type="FusedSGD", lr=0.1), clip_grad=dict(max_norm=1.0)))
    import sys
    if "mmengine.logging" not in sys.modules:   # standalone: no MessageHub, nothing read back
        assert ow.message_hub is None
    ow.message_hub = hub = FakeHub()
    ow.update_params(loss_fn(m, x, y))
    assert hub.log == [("train/grad_norm", pytest.approx(float(ow.last_grad_norm)))]
    ow.lazy_logging = True
    norms = []
    for _ in range(3):
        ow.update_params(loss_fn(m, x, y))
        norms.append(ow.last_grad_norm)
    assert len(hub.log) == 1               # nothing read yet
    ow.flush_scalars()
    assert [v for _, v in hub.log[1:]] == pytest.approx([float(n) for n in norms])


# ---- lr / momentum / state -------------------------------------------------------------------
def test_get_lr_momentum_and_state_roundtrip():
    m = make_model()
    ow = build_optim_wrapper(m, dict(optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9),
                                     paramwise_cfg=dict(bias_lr_mult=2.0)))
    lrs = ow.get_lr()
    assert lrs["base_lr"] == [0.1] and lrs["lr"] == [0.1, 0.2, 0.1, 0.2]
    assert ow.get_momentum() == dict(momentum=[0.9] * 4)
    assert ow.param_groups[-1] is ow.base_param_settings
    x, y = data()
    ow.update_params(loss_fn(m, x, y))
    sd = ow.state_dict()
    assert "base_param_settings" in sd
    m2 = make_model(5)
    ow2 = build_optim_wrapper(m2, dict(optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9),
                                       paramwise_cfg=dict(bias_lr_mult=2.0)))
    ow2.load_state_dict(sd)
    assert ow2.optimizer.state_dict()["state"].keys() == ow.optimizer.state_dict()["state"].keys()
    adam = build_optim_wrapper(make_model(), dict(optimizer=dict(type="FusedAdam", lr=1e-3)))
    assert adam.get_momentum() == dict(momentum=[0.9]) and "base_lr" not in adam.get_lr()


# ---- AMP ---------------------------------------------------------------------------------------
def _amp_ref_step(m, opt, scaler, x, y, max_norm=None):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_fn(m, x, y)
    scaler.scale(loss).backward()
    norm = None
    if max_norm is not None:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    return norm


@pytest.mark.parametrize("clip", [None, 0.5])
def test_amp_fp16_fused_matches_gradscaler(clip, monkeypatch):
    x, y = data()
    m1 = make_model()
    o1 = torch.optim.Adam(m1.parameters(), lr=1e-2)
    s1 = torch.amp.GradScaler("cpu", growth_interval=2)
    m2 = make_model()
    cfg = dict(type="AmpOptimWrapper", dtype="float16", loss_scale=dict(growth_interval=2),
               optimizer=dict(type="FusedAdam", lr=1e-2))
    if clip:
        cfg["clip_grad"] = dict(max_norm=clip)
    ow = build_optim_wrapper(m2, cfg)
    assert isinstance(ow, AmpOptimWrapper) and ow.loss_scaler.is_enabled()
    for i in range(5):
        n1 = _amp_ref_step(m1, o1, s1, x, y, clip)
        with monkeypatch.context() as mp:     # no separate unscale pass on the fused path
            mp.setattr(torch.amp.GradScaler, "_unscale_grads_",
                       lambda *a: (_ for _ in ()).throw(AssertionError("unscale pass")))
            with ow.optim_context(m2):
                loss = loss_fn(m2, x, y)
            ow.update_params(loss)
        if clip:
            torch.testing.assert_close(ow.last_grad_norm, n1)
        assert ow.loss_scaler.get_scale() == s1.get_scale()
    assert max_diff(m1, m2) < 1e-6
    assert ow.loss_scaler.get_scale() == 65536.0 * 4       # grew twice


def test_amp_fp16_inf_skips_step_and_backs_off():
    x, y = data()
    m = make_model()
    ow = build_optim_wrapper(m, dict(type="AmpOptimWrapper", dtype="float16",
                                     optimizer=dict(type="FusedSGD", lr=0.1, momentum=0.9),
                                     clip_grad=dict(max_norm=1.0)))
    with ow.optim_context(m):
        loss = loss_fn(m, x, y)
    ow.update_params(loss)                      # initialises state
    before = [p.detach().clone() for p in m.parameters()]
    buf = [ow.optimizer.state[p]["momentum_buffer"].clone() for p in m.parameters()]
    with ow.optim_context(m):
        loss = loss_fn(m, x, y)
    ow.backward(ow.scale_loss(loss))
    next(m.parameters()).grad[0, 0] = float("inf")
    ow.step()
    ow.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(torch.equal(b, ow.optimizer.state[p]["momentum_buffer"])
               for b, p in zip(buf, m.parameters()))
    assert ow.loss_scaler.get_scale() == 65536.0 * 0.5
    with ow.optim_context(m):                   # and training goes on
        loss = loss_fn(m, x, y)
    ow.update_params(loss)
    assert not all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_amp_static_scale_and_state_dict():
    m = make_model()
    ow = build_optim_wrapper(m, dict(type="AmpOptimWrapper", dtype="float16", loss_scale=512.0,
                                     optimizer=dict(type="FusedAdamW", lr=1e-3)))
    x, y = data()
    for _ in range(3):
        with ow.optim_context(m):
            loss = loss_fn(m, x, y)
        ow.update_params(loss)
    assert ow.loss_scaler.get_scale() == 512.0
    sd = ow.state_dict()
    assert sd["loss_scaler"]["scale"] == 512.0
    ow2 = build_optim_wrapper(make_model(), dict(type="AmpOptimWrapper", dtype="float16",
                                                 optimizer=dict(type="FusedAdamW", lr=1e-3)))
    ow2.load_state_dict(sd)
    assert ow2.loss_scaler.get_scale() == 512.0


def test_amp_bf16_needs_no_scaler():
    x, y = data()
    m = make_model()
    ow = build_optim_wrapper(m, dict(type="AmpOptimWrapper", dtype="bfloat16",
                                     optimizer=dict(type="FusedAdamW", lr=1e-2),
                                     clip_grad=dict(max_norm=0.5)))
    assert not ow.loss_scaler.is_enabled()
    with ow.optim_context(m):
        out = m(x)
        assert out.dtype == torch.bfloat16
        loss = (out.float() - y).pow(2).mean()
    ow.update_params(loss)
    assert isinstance(ow.last_grad_norm, torch.Tensor)
    assert ow.state_dict()["loss_scaler"] == {}


def test_amp_torch_optimizer_unfused_path():
    x, y = data()
    m1 = make_model()
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    s1 = torch.amp.GradScaler("cpu")
    m2 = make_model()
    ow = build_optim_wrapper(m2, dict(type="AmpOptimWrapper", dtype="float16",
                                      optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(max_norm=0.2)))
    for _ in range(3):
        _amp_ref_step(m1, o1, s1, x, y, 0.2)
        with ow.optim_context(m2):
            loss = loss_fn(m2, x, y)
        ow.update_params(loss)
    assert max_diff(m1, m2) < 1e-6


# ---- bad input ---------------------------------------------------------------------------------
def test_wrapper_bad_input():
    m = make_model()
    opt = fusedopt.FusedSGD(m.parameters(), lr=0.1)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="accumulative_counts"):
            OptimWrapper(opt, accumulative_counts=bad)
        with pytest.raises(AssertionError):     # mmengine's type, too
            OptimWrapper(opt, accumulative_counts=bad)
    with pytest.raises(TypeError, match="accumulative_counts"):
        OptimWrapper(opt, accumulative_counts=1.5)
    with pytest.raises(ValueError, match='type of clip_grad should be "norm" or "value" but got l2'):
        OptimWrapper(opt, clip_grad=dict(type="l2", max_norm=1))
    with pytest.raises(AssertionError, match="clip_grad"):
        OptimWrapper(opt, clip_grad=dict())
    with pytest.raises(AssertionError, match="besides"):
        OptimWrapper(opt, clip_grad=dict(type="norm"))
    with pytest.raises(TypeError, match="'max_nrom'"):
        OptimWrapper(opt, clip_grad=dict(max_nrom=1.0))
    with pytest.raises(ValueError, match="max_norm"):
        OptimWrapper(opt, clip_grad=dict(norm_type=2))
    with pytest.raises(TypeError, match="optimizer"):
        OptimWrapper(object())
    with pytest.raises(AssertionError, match="dtype"):
        AmpOptimWrapper(optimizer=opt, dtype="float8")
    with pytest.raises(TypeError, match="loss_scale"):
        AmpOptimWrapper(optimizer=opt, loss_scale="static")
    with pytest.raises(ValueError, match="accumulative_counts"):
        build_optim_wrapper(m, dict(optimizer=dict(type="FusedSGD", lr=0.1), accumulative_counts=0))
