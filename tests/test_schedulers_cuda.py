"""Graph mode on a GPU: a captured CUDA graph of (schedule, clip, step) replays a whole
schedule; device writes never sync. Skipped without CUDA (the CPU logic is in
tests/test_schedulers.py::test_device_schedule_matches_host)."""
import pytest
import torch

import fusedopt
from fusedopt import schedulers as S

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CFG = [dict(type="LinearLR", start_factor=0.01, end=10, by_epoch=False),
       dict(type="CosineAnnealingLR", T_max=40, eta_min=1e-5, begin=10, end=50, by_epoch=False),
       dict(type="CosineAnnealingMomentum", T_max=50, eta_min=0.85, by_epoch=False)]


def model(device):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 32, device=device)) for _ in range(6)]


def lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def test_host_scheduler_steps_do_not_sync():
    params = model("cuda")
    opt = fusedopt.FusedAdamW([{"params": [p], "lr": 1e-3 * (i + 1)} for i, p in enumerate(params)])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    scheds = S.build_param_scheduler(opt, CFG)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            for s in scheds:
                s.step()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = torch.optim.AdamW([{"params": [torch.nn.Parameter(p.detach().clone())],
                              "lr": 1e-3 * (i + 1)} for i, p in enumerate(params)])
    ref_s = S.build_param_scheduler(ref, CFG)
    for _ in range(20):
        for s in ref_s:
            s.step()
    assert lrs(opt) == lrs(ref)
    (table,) = opt.hparam_tables.values()
    assert table[:, 0].tolist() == lrs(ref)


def test_cuda_graph_replays_the_schedule():
    steps = 45
    params = model("cuda")
    groups = [{"params": [p], "lr": 1e-3 * (i + 1)} for i, p in enumerate(params)]
    opt = fusedopt.FusedAdamW(groups, weight_decay=0.01)
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    eager_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    eager = fusedopt.FusedAdamW([{"params": [p], "lr": 1e-3 * (i + 1)}
                                 for i, p in enumerate(eager_params)], weight_decay=0.01)
    for p, g in zip(eager_params, grads):
        p.grad = g.clone()

    # one eager step first (state init), same on both
    opt.step()
    eager.step()
    schedule = S.DeviceSchedule(S.build_param_scheduler(opt, CFG))
    host = S.build_param_scheduler(eager, CFG)

    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        schedule.step()
        opt.clip_grad_norm_(1.0)
        opt.step()
    for _ in range(steps):
        graph.replay()
        for s in host:
            s.step()
        fusedopt.clip_grad_norm_(eager_params, 1.0)
        eager.step()
    torch.cuda.synchronize()
    (table,) = opt.hparam_tables.values()
    assert table[:, 0].tolist() == pytest.approx(lrs(eager), rel=1e-12)
    schedule.sync_to_host()
    assert lrs(opt) == pytest.approx(lrs(eager), rel=1e-12)
    for p, q in zip(params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
