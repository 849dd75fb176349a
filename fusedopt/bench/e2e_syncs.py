"""Host syncs counted, per phase of a training iteration (fusedopt/bench/e2e.py).

Two counts, because neither sees everything:
- ``ops``: every call, from Python or C++, of an aten op that makes the host wait for the device
  (``_local_scalar_dense`` is ``.item()``/``float()``/``bool()``; ``nonzero``, ``masked_select``,
  ``unique``... size their output from the data; a copy of a CUDA tensor to the CPU), seen by a
  ``TorchDispatchMode``. It counts on the CPU too, where nothing waits: what the same iteration
  would sync on a GPU.
- ``cuda``: on a GPU, ``torch.cuda.set_sync_debug_mode("warn")``'s warnings, one per
  synchronising CUDA call (it also sees waits outside aten: a pinned-memory read, a stream sync).
The counter runs over one iteration only (``enter``/``exit`` from the hooks that mark it): the
mode costs microseconds per op, so the timed iterations run without it.
"""
import warnings
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# ops whose output size or value the host must read from the device before returning
_SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2,
             aten.unique_dim, aten.unique_consecutive, aten.is_nonzero, aten.equal,
             aten.repeat_interleave}


def _to_host(func, args, kwargs):
    """A copy from a CUDA tensor into host memory (``.cpu()``, ``.to('cpu')``, ``copy_``)."""
    if func.overloadpacket is aten._to_copy:
        dev = kwargs.get("device")
        return (isinstance(args[0], torch.Tensor) and args[0].is_cuda and dev is not None
                and torch.device(dev).type == "cpu" and not kwargs.get("non_blocking", False))
    if func.overloadpacket is aten.copy_:
        dst, src = args[0], args[1]
        return (isinstance(src, torch.Tensor) and src.is_cuda and not dst.is_cuda
                and not (len(args) > 2 and args[2]) and not kwargs.get("non_blocking", False))
    return False


class SyncCounter(TorchDispatchMode):
    """``counter.enter()``, then ``counter.phase = name`` as the iteration moves on, then
    ``counter.exit()``; ``counter.counts`` is ``{phase: n}`` (ops), ``counter.cuda_counts`` the
    same from CUDA's sync debug mode, ``counter.where`` names each op counted."""

    def __init__(self):
        super().__init__()
        self._phase = "other"
        self.counts = Counter()
        self.cuda_counts = Counter()
        self.where = Counter()
        self._caught = None
        self._booked = 0
        self._catcher = None
        self._old_mode = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in _SYNC_OPS or _to_host(func, args, kwargs):
            self.counts[self._phase] += 1
            self.where[f"{self._phase}: {func.overloadpacket.__name__}"] += 1
        return func(*args, **kwargs)

    def _book_cuda(self):
        if self._caught is not None:
            new = [w for w in self._caught[self._booked:]
                   if "synchronizing" in str(w.message).lower()]
            self.cuda_counts[self._phase] += len(new)
            self._booked = len(self._caught)

    @property
    def phase(self):
        return self._phase

    @phase.setter
    def phase(self, name):
        self._book_cuda()
        self._phase = name

    def enter(self):
        if torch.cuda.is_available():
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__()
            warnings.simplefilter("always")
            self._old_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        self.__enter__()
        return self

    def exit(self):
        self.__exit__(None, None, None)
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode(self._old_mode)
            self._book_cuda()
            self._catcher.__exit__(None, None, None)
            self._catcher = self._caught = None

    def summary(self):
        out = {"ops": dict(self.counts), "where": dict(self.where)}
        if torch.cuda.is_available():
            out["cuda"] = dict(self.cuda_counts)
        return out
