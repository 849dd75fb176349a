"""fusedopt's fused operations as torch.library custom ops, registered when this module is
imported: fusedopt/_ops.py imports it where a compiled step needs them (Note [compiled steps]).
Registering costs ~25 ms, more than ``import fusedopt``, so nothing imports it eagerly."""
from typing import List, Optional

import torch

from fusedopt import _engine, backends
from fusedopt.algorithms import ALGORITHMS


def _spec(params, grads, states, steps, group_index, weights, seeds):
    n = len(params)
    k = len(states) // n
    return _engine.BucketSpec(params[0].device, params[0].dtype, 0, params=list(params),
                              states=[list(states[j * n:(j + 1) * n]) for j in range(k)],
                              steps=list(steps), group_index=list(group_index),
                              grads=list(grads), weights=weights, seeds=list(seeds))


@torch.library.custom_op("fusedopt::step_", mutates_args=("params", "states", "steps"))
def step_(params: List[torch.Tensor], grads: List[Optional[torch.Tensor]],
          states: List[torch.Tensor], steps: List[torch.Tensor], hp: torch.Tensor,
          group_index: List[int], algo: str, flags: int, clip_coef: Optional[torch.Tensor],
          inv_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
          backend: str, weights: int, seeds: List[int]) -> None:
    """One step of algorithm ``algo`` (fusedopt.algorithms) over ``params`` on ``backend``;
    ``weights`` and ``seeds`` as BucketSpec's (Note [precision modes])."""
    if params:
        module = backends.named(backend)
        spec = _spec(params, grads, states, steps, group_index, weights, seeds)
        module.step(module.make_bucket(spec), hp,
                    ALGORITHMS[algo], flags, clip_coef=clip_coef, inv_scale=inv_scale,
                    found_inf=found_inf)


@step_.register_fake
def _step_fake(params, grads, states, steps, hp, group_index, algo, flags, clip_coef, inv_scale,
               found_inf, backend, weights, seeds):
    return None


@torch.library.custom_op("fusedopt::norm", mutates_args=())
def norm(tensors: List[torch.Tensor], norm_type: float, backend: str) -> torch.Tensor:
    """The 2- or inf-norm of ``tensors`` (one device) as a 0-d tensor, float64 if one is fp64,
    else float32 (Note [norm dtype], fusedopt/backends/__init__.py)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    return backends.named(backend).tensors_norm(tensors, norm_type)


@norm.register_fake
def _norm_fake(tensors, norm_type, backend):
    fp64 = any(t.dtype == torch.float64 for t in tensors)
    return torch.empty((), dtype=torch.float64 if fp64 else torch.float32,
                       device=tensors[0].device if tensors else torch.device("cpu"))


@torch.library.custom_op("fusedopt::scale_", mutates_args=("tensors",))
def scale_(tensors: List[torch.Tensor], coef: torch.Tensor, backend: str) -> None:
    """``tensors[i] *= coef`` in place (one device; ``coef``: a 0-d float32 or float64 tensor
    there)."""
    if tensors:
        backends.named(backend).tensors_scale_(tensors, coef)


@scale_.register_fake
def _scale_fake(tensors, coef, backend):
    return None
