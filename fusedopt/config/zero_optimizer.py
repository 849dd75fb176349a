"""ZeroRedundancyOptimizer: torch's ZeRO-1 optimizer (optimizer state sharded over the ranks),
buildable from a config as in mmengine: ``dict(type='ZeroRedundancyOptimizer',
optimizer_type='FusedAdamW', lr=...)``.

``optimizer_type`` is looked up in ``OPTIMIZERS`` (torch's optimizers, fusedopt's, anything
registered there); mmengine looks it up in ``torch.optim`` only. Imported on the first lookup of
the name (Note [lazy registry entries], registry.py).
"""
import torch
import torch.distributed as dist

from fusedopt.config.errors import UnknownTypeError
from fusedopt.config.registry import OPTIMIZERS

__all__ = []

if dist.is_available():
    from torch.distributed.optim import ZeroRedundancyOptimizer as _TorchZeRO

    @OPTIMIZERS.register_module()
    class ZeroRedundancyOptimizer(_TorchZeRO):
        """``torch.distributed.optim.ZeroRedundancyOptimizer`` whose local optimizer is named
        by ``optimizer_type``. ``state_dict()`` consolidates the shards on rank 0 and returns
        them there, ``{}`` on the other ranks (what mmengine's checkpointing expects)."""

        optimizers_registry = OPTIMIZERS     # fusedopt.mmengine points its subclass at mmengine's

        def __init__(self, params, optimizer_type, **kwargs):
            if isinstance(optimizer_type, str):
                cls = self.optimizers_registry.get(optimizer_type)
                if cls is None:
                    reg = self.optimizers_registry
                    msg = (reg._unknown_message(optimizer_type)
                           if hasattr(reg, "_unknown_message")
                           else f"{optimizer_type} is not in the optimizer registry")
                    raise UnknownTypeError(f"ZeroRedundancyOptimizer.optimizer_type: {msg}")
            elif isinstance(optimizer_type, type) and issubclass(optimizer_type,
                                                                 torch.optim.Optimizer):
                cls = optimizer_type
            else:
                raise TypeError("optimizer_type should be an optimizer name or class, "
                                f"but got {optimizer_type!r}")
            super().__init__(list(params), cls, **kwargs)

        def state_dict(self):
            self.consolidate_state_dict()
            main = not dist.is_initialized() or dist.get_rank() == 0
            return super().state_dict() if main else {}

    __all__ = ["ZeroRedundancyOptimizer"]
