"""OptimWrapperDict: several named optimizer wrappers as one (GANs, multi-model training),
mmengine 0.10's API and semantics, standalone.

It is an ``OptimWrapper`` by type, like mmengine's, but steps nothing itself: ``update_params``,
``backward``, ``step`` and ``optim_context`` raise (which wrapper should act is ambiguous); call
them on ``wrappers['name']``. ``zero_grad``, ``state_dict``, ``load_state_dict``, ``get_lr``,
``get_momentum`` and ``param_groups`` cover every wrapper, keyed by name.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from fusedopt.config.errors import ConfigKeyError, ConfigTypeError
from fusedopt.config.optim_wrapper import OptimWrapper


class OptimWrapperDict(OptimWrapper):
    """``OptimWrapperDict(generator=OptimWrapper(...), discriminator=OptimWrapper(...))``."""

    # what a value may be; fusedopt.mmengine's subclass adds mmengine's OptimWrapper
    wrapper_types: tuple = (OptimWrapper,)

    def __init__(self, **optim_wrapper_dict: OptimWrapper):
        for key, value in optim_wrapper_dict.items():
            if not isinstance(value, self.wrapper_types):
                raise ConfigTypeError("`OptimWrapperDict` only accept OptimWrapper instance, "
                                      f"but got {key}: {type(value)}")
        self.optim_wrappers = optim_wrapper_dict

    # -- what each wrapper must do itself -----------------------------------------------------
    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None) -> None:
        raise NotImplementedError("`update_params` should be called by each optimizer "
                                  "separately: OptimWrapperDict['name'].update_params(loss)")

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        raise NotImplementedError("`backward` should be called by each optimizer separately "
                                  "(each wrapper may scale the loss differently)")

    def step(self, **kwargs) -> None:
        raise NotImplementedError("`step` should be called by each optimizer separately")

    def optim_context(self, model: nn.Module):
        raise NotImplementedError("`optim_context` should be called by each optimizer "
                                  "separately")

    def initialize_count_status(self, model: nn.Module, cur_iter, max_iters) -> None:
        """Nothing: which model goes with which wrapper is unknown here; call it on each."""

    # -- every wrapper ------------------------------------------------------------------------
    def zero_grad(self, **kwargs) -> None:
        for optim_wrapper in self.optim_wrappers.values():
            optim_wrapper.zero_grad()

    @property
    def param_groups(self) -> Dict[str, list]:
        return {name: w.param_groups for name, w in self.optim_wrappers.items()}

    def get_lr(self) -> Dict[str, List[float]]:
        out = {}
        for name, w in self.optim_wrappers.items():
            lrs = w.get_lr()
            if "base_lr" in lrs:
                out[f"{name}.base_lr"] = lrs["base_lr"]
            out[f"{name}.lr"] = lrs["lr"]
        return out

    def get_momentum(self) -> Dict[str, List[float]]:
        return {f"{name}.momentum": w.get_momentum()["momentum"]
                for name, w in self.optim_wrappers.items()}

    def state_dict(self) -> dict:
        return {name: w.state_dict() for name, w in self.optim_wrappers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, state in state_dict.items():
            if name not in self.optim_wrappers:
                raise ConfigKeyError(f"Mismatched `state_dict`! cannot found {name} in "
                                     f"OptimWrapperDict (it holds {list(self.optim_wrappers)})")
            self.optim_wrappers[name].load_state_dict(state)

    # -- a dict of wrappers -------------------------------------------------------------------
    def items(self) -> Iterator[Tuple[str, OptimWrapper]]:
        yield from self.optim_wrappers.items()

    def values(self) -> Iterator[OptimWrapper]:
        yield from self.optim_wrappers.values()

    def keys(self) -> Iterator[str]:
        yield from self.optim_wrappers.keys()

    def __getitem__(self, key: str) -> OptimWrapper:
        if key not in self.optim_wrappers:
            raise ConfigKeyError(f"Cannot find {key} in OptimWrapperDict, please check your "
                                 f"optimizer constructor (it holds {list(self.optim_wrappers)})")
        return self.optim_wrappers[key]

    def __contains__(self, key: str) -> bool:
        return key in self.optim_wrappers

    def __len__(self) -> int:
        return len(self.optim_wrappers)

    def __repr__(self) -> str:
        return "".join(f"name: {name}\n{w!r}" for name, w in self.optim_wrappers.items())


__all__ = ["OptimWrapperDict"]
