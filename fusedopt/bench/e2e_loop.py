"""The end-to-end benchmark's plain-loop routes (fusedopt/bench/e2e.py), on fusedopt's standalone
config layer (``fusedopt.build_optim_wrapper``, ``fusedopt.build_param_scheduler``):

- ``standalone``: eager iterations;
- ``graph``: the whole iteration (forward, backward, clip, step, the schedule as a
  ``DeviceSchedule``) captured once in a CUDA graph and replayed. Its bf16 autocast runs with
  ``cache_enabled=False``: a cached cast of a weight made during capture would be replayed as it
  was, stale once the step has changed the weight. In ``dry`` mode (CPU) the same iteration
  function runs eagerly in place of each replay;
- ``compile``: forward, backward, clip, step and zero_grad under
  ``torch.compile(mode="reduce-overhead")`` (``dry``: Dynamo with the eager backend), the
  schedulers stepping outside it, as README.md "torch.compile" describes.

Each returns (losses, marks, clock, wrapper, syncs): ``marks`` per iteration (it0, step0, step1,
sched0, sched1, it1) where the optimizer's part can be told apart, else (it0, it1).
"""
import contextlib

import torch
from torch import nn

import fusedopt
from fusedopt.bench.e2e_data import Clock, nudge
from fusedopt.bench.e2e_recipe import optimizer_cfg, param_scheduler_cfg, wrapper_cfg
from fusedopt.bench.e2e_syncs import SyncCounter


def _build(impl, model, args, precision=None):
    wrapper = fusedopt.build_optim_wrapper(model, wrapper_cfg(args, optimizer_cfg(impl, args),
                                                              precision))
    # With mmengine imported (the Runner rows ran in this process), the wrapper logs its grad
    # norm to mmengine's MessageHub: lazily, read once per --log-interval outside the optimizer's
    # part, as the Runner route's fusedopt.LazyScalarLogHook does. Eagerly it would be a float()
    # in the step: a host sync, and an error inside a CUDA graph capture.
    wrapper.lazy_logging = True
    return wrapper, fusedopt.build_param_scheduler(wrapper, param_scheduler_cfg(args),
                                                   epoch_length=args.epoch_length)


def _autocast(args, device):
    if args.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    if args.precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16, cache_enabled=False)
    return contextlib.nullcontext()


def standalone(impl, model, clips, args, device, *, sync_iter=None, nudge_seed=None):
    wrapper, scheds = _build(impl, model, args)
    clock, marks, losses, syncs = Clock(device), [], [], None
    for it in range(args.iters):
        x, y = clips.batch(it)
        counter = SyncCounter().enter() if it == sync_iter else None
        m = dict(it0=clock.mark())
        if counter:
            counter.phase = "forward_backward"
            m["counted"] = True
        with wrapper.optim_context(model):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        wrapper.backward(loss)
        m["step0"] = clock.mark()
        if counter:
            counter.phase = "optimizer"
        wrapper.step()
        m["step1"] = clock.mark()
        if counter:
            counter.phase = "other"
        wrapper.zero_grad()
        m["sched0"] = clock.mark()
        if counter:
            counter.phase = "optimizer"
        for s in scheds:
            s.step()
        m["sched1"] = clock.mark()
        if counter:
            counter.phase = "other"
        if (it + 1) % args.log_interval == 0 or it + 1 == args.iters:
            wrapper.flush_scalars()
        m["it1"] = clock.mark()
        if counter:
            counter.exit()
            syncs = counter.summary()
        marks.append(m)
        losses.append(loss.detach())
        if nudge_seed is not None and it == 0:
            nudge(model.parameters(), nudge_seed)
    return losses, marks, clock, wrapper, syncs


def graph(impl, model, clips, args, device, *, dry=False):
    """``impl`` 'fusedopt-cuda' (or 'fusedopt-cpu' in dry mode): one CUDA graph per iteration."""
    from fusedopt.schedulers import DeviceSchedule
    # fp32 wrapper: bf16 is the autocast below (fusedopt's bf16 AmpOptimWrapper has no loss scale)
    wrapper, scheds = _build(impl, model, args, precision="fp32")
    schedule = DeviceSchedule(scheds, epoch_length=args.epoch_length)
    static_x, static_y = (t.clone() for t in clips.batch(0))
    clock, marks, losses = Clock(device), [], []

    def iteration():
        wrapper.optimizer.zero_grad(set_to_none=False)
        with _autocast(args, device):
            loss = nn.functional.cross_entropy(model(static_x).float(), static_y)
        wrapper.backward(loss)
        wrapper.step()
        schedule.step()
        return loss

    m = dict(it0=clock.mark())
    if dry:
        losses.append(iteration().detach().clone())
    else:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):       # iteration 0, eagerly: creates grads and state
            losses.append(iteration().detach().clone())
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_loss = iteration()
    m["it1"] = clock.mark()
    marks.append(m)
    for it in range(1, args.iters):
        x, y = clips.batch(it)
        static_x.copy_(x)
        static_y.copy_(y)
        m = dict(it0=clock.mark())
        if dry:
            static_loss = iteration()
        else:
            cuda_graph.replay()
        m["it1"] = clock.mark()
        marks.append(m)
        losses.append(static_loss.detach().clone())
    schedule.sync_to_host()
    return losses, marks, clock, wrapper, None


def compiled(impl, model, clips, args, device, *, dry=False):
    """``impl`` 'fusedopt-<backend>' or 'torch-fused'/'torch-foreach'."""
    wrapper, scheds = _build(impl, model, args, precision="fp32")
    opt = wrapper.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    fused = impl.startswith("fusedopt-")

    def train_step(x, y):
        with _autocast(args, device):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        if fused:
            opt.clip_grad_norm_(40.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 40.0)
        opt.step()
        opt.zero_grad()
        return loss.detach()

    step = (torch.compile(train_step, backend="eager") if dry
            else torch.compile(train_step, mode="reduce-overhead"))
    clock, marks, losses = Clock(device), [], []
    for it in range(args.iters):
        x, y = clips.batch(it)
        if not dry:
            torch.compiler.cudagraph_mark_step_begin()
        m = dict(it0=clock.mark())
        loss = step(x, y)
        m["sched0"] = clock.mark()
        for s in scheds:
            s.step()
        m["sched1"] = m["it1"] = clock.mark()
        marks.append(m)
        losses.append(loss.clone())
    return losses, marks, clock, wrapper, None
