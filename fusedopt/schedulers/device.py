"""Graph mode: a chain of schedulers evaluated on the device from device step counters.

``DeviceSchedule(schedulers).step()`` does what ``for s in schedulers: s.step()`` does, with
tensor math only: each scheduler's ``_global_step``/``last_step`` are 0-d int64 tensors on the
device, its window test and its chainable update are ``torch.where`` selections, and the new
values go into the optimizer's hyper-parameter table with ``set_hparam(name, tensor)`` (a
device copy). No ``.item()``, no host sync, no allocation that depends on values, so a CUDA
graph that captures ``schedule.step(); clip; opt.step()`` replays a whole training schedule::

    schedule = DeviceSchedule(schedulers)        # builds every constant now (not during capture)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step(); schedule.step()
    for _ in range(n): g.replay()
    schedule.sync_to_host()                      # counters and param_group values back (syncs)

One ``step()`` is one training iteration, as mmengine's ParamSchedulerHook sees it: the
``by_epoch=False`` schedulers step (in list order), and every ``epoch_length``-th call the
``by_epoch=True`` ones step too (after them, in list order), gated on device. So a config that
mixes iteration- and epoch-based schedulers (warm-up by iterations, MultiStepLR by epochs)
replays in one graph.

The host objects are not advanced while the device schedule runs, and the param_group dicts
may keep older floats until ``sync_to_host()``. Checkpoint: ``sync_to_host()``, then the
schedulers' ``state_dict()``; resume: load the schedulers' states, then build the
DeviceSchedule from them. ReduceOnPlateau* needs host metrics and has no
device form. OneCycle past ``total_steps`` keeps its last value (the host form raises).
"""
import torch

__all__ = ["DeviceSchedule"]


class DeviceSchedule:
    def __init__(self, schedulers, epoch_length=None, device=None):
        self.schedulers = list(schedulers)
        self.epoch_length = epoch_length
        for s in self.schedulers:
            if s.need_val_args:
                raise NotImplementedError(f"{type(s).__name__} is driven by validation "
                                          "metrics on the host and has no device form")
        if epoch_length is None and any(s.by_epoch for s in self.schedulers):
            raise ValueError("by_epoch=True schedulers need epoch_length (iterations per "
                             "epoch) to be stepped on the device")
        self._iteration = None
        self._vectors = {}            # Slot -> device vector of its current values
        self._counters = []           # per scheduler: (global_step, last_step) int64 tensors
        for s in self.schedulers:
            if s.need_val_args:
                raise NotImplementedError(f"{type(s).__name__} is driven by validation "
                                          "metrics on the host and has no device form")
            slot = s._slot
            if slot not in self._vectors:
                self._vectors[slot] = slot.device_values(device)
            vec = self._vectors[slot]
            self._counters.append((torch.tensor(s._global_step, device=vec.device),
                                   torch.tensor(s.last_step, device=vec.device)))
            # build every constant of the device form now, outside any capture
            s._device_update(vec.clone(), torch.zeros((), dtype=torch.int64, device=vec.device))
            if self._iteration is None:
                self._iteration = torch.zeros((), dtype=torch.int64, device=vec.device)

    def step(self):
        pairs = list(zip(self.schedulers, self._counters))
        for s, counters in pairs:
            if not s.by_epoch:
                self._step_one(s, counters, None)
        if self.epoch_length is not None and self._iteration is not None:
            self._iteration.add_(1)
            epoch_end = torch.remainder(self._iteration, self.epoch_length) == 0
            for s, counters in pairs:
                if s.by_epoch:
                    self._step_one(s, counters, epoch_end)
        for slot, v in self._vectors.items():
            if slot.fused:
                slot.optimizer.set_hparam(slot.name, v)

    def _step_one(self, s, counters, gate):
        gstep, lstep = counters
        v = self._vectors[s._slot]
        if gate is None:
            gstep.add_(1)
            inside = (gstep >= s.begin) & (gstep < s.end)
        else:
            gstep.add_(gate.to(gstep.dtype))
            inside = gate & (gstep >= s.begin) & (gstep < s.end)
        lstep.add_(inside.to(lstep.dtype))
        v.copy_(torch.where(inside, s._device_update(v, lstep), v))

    def values(self, scheduler_or_slot=None):
        """Device vector of the current values (of the first scheduler's parameter by default)."""
        slot = getattr(scheduler_or_slot, "_slot", scheduler_or_slot) or self.schedulers[0]._slot
        return self._vectors[slot]

    def sync_to_host(self):
        """Copy counters and values back to the host schedulers and the param_group dicts
        (reads device memory: a host sync)."""
        for s, (gstep, lstep) in zip(self.schedulers, self._counters):
            s._global_step = int(gstep.item())
            s.last_step = int(lstep.item())
            s._last_host = None
        for slot, v in self._vectors.items():
            slot.write(v.detach().to("cpu", torch.float64).contiguous())
