"""fusedopt's fused operations as torch.library custom ops: what a compiled step calls.

Note [compiled steps]: under torch.compile the optimizer does not step its buckets through their
prebuilt backend handles (opaque objects Dynamo cannot trace). It calls these ops with each
bucket's tensors as lists, so Dynamo puts every op in the graph; the mutation annotations let
AOTAutograd functionalize them, and the fake implementations give the outputs' metadata. At run
time an op builds a throw-away handle of the named backend from its arguments and steps it. The
grads are arguments (functionalization may hand the op copies of the params, whose .grad is
not the grad), and a state list is flattened: ``states[k * n + i]`` is state k of ``params[i]``.
Packing, state creation and the table's rows happen outside the graph, in
``FusedOptimizer._init_group``, which Dynamo runs for real while tracing (its hook for
torch.optim's own ``_init_group``); guards send Dynamo back there when a grad appears or a group
is added. Registered on first use: registering costs ~25 ms, more than ``import fusedopt``.
"""
from typing import List, Optional

import torch

from fusedopt import _engine, backends


def _spec(params, grads, states, steps, group_index):
    n = len(params)
    k = len(states) // n
    return _engine.BucketSpec(params[0].device, params[0].dtype, (), params=list(params),
                              states=[list(states[j * n:(j + 1) * n]) for j in range(k)],
                              steps=list(steps), group_index=list(group_index),
                              grads=list(grads))


@torch.library.custom_op("fusedopt::adam_", mutates_args=("params", "states", "steps"))
def adam_(params: List[torch.Tensor], grads: List[Optional[torch.Tensor]],
          states: List[torch.Tensor], steps: List[torch.Tensor], hp: torch.Tensor,
          group_index: List[int], amsgrad: bool, maximize: bool, decoupled: bool,
          clip_coef: Optional[torch.Tensor], inv_scale: Optional[torch.Tensor],
          found_inf: Optional[torch.Tensor], backend: str) -> None:
    """Adam (decoupled=False) or AdamW over ``params`` on ``backend`` (docs/internals.md)."""
    if params:
        module = backends.named(backend)
        module.adam_step(module.make_bucket(_spec(params, grads, states, steps, group_index)),
                         hp, amsgrad=amsgrad, maximize=maximize, decoupled=decoupled,
                         clip_coef=clip_coef, inv_scale=inv_scale, found_inf=found_inf)


@adam_.register_fake
def _adam_fake(params, grads, states, steps, hp, group_index, amsgrad, maximize, decoupled,
               clip_coef, inv_scale, found_inf, backend):
    return None


@torch.library.custom_op("fusedopt::sgd_", mutates_args=("params", "states", "steps"))
def sgd_(params: List[torch.Tensor], grads: List[Optional[torch.Tensor]],
         states: List[torch.Tensor], steps: List[torch.Tensor], hp: torch.Tensor,
         group_index: List[int], nesterov: bool, maximize: bool,
         clip_coef: Optional[torch.Tensor], inv_scale: Optional[torch.Tensor],
         found_inf: Optional[torch.Tensor], backend: str) -> None:
    """SGD over ``params`` (``states``: the momentum buffers, or empty) on ``backend``."""
    if params:
        module = backends.named(backend)
        module.sgd_step(module.make_bucket(_spec(params, grads, states, steps, group_index)),
                        hp, nesterov=nesterov, maximize=maximize, clip_coef=clip_coef,
                        inv_scale=inv_scale, found_inf=found_inf)


@sgd_.register_fake
def _sgd_fake(params, grads, states, steps, hp, group_index, nesterov, maximize, clip_coef,
              inv_scale, found_inf, backend):
    return None


@torch.library.custom_op("fusedopt::norm", mutates_args=())
def norm(tensors: List[torch.Tensor], norm_type: float, backend: str) -> torch.Tensor:
    """The 2- or inf-norm of ``tensors`` (one device) as a 0-d float32 tensor."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    return backends.named(backend).tensors_norm(tensors, norm_type)


@norm.register_fake
def _norm_fake(tensors, norm_type, backend):
    return torch.empty((), dtype=torch.float32,
                       device=tensors[0].device if tensors else torch.device("cpu"))


@torch.library.custom_op("fusedopt::scale_", mutates_args=("tensors",))
def scale_(tensors: List[torch.Tensor], coef: torch.Tensor, backend: str) -> None:
    """``tensors[i] *= coef`` in place (one device; ``coef``: a 0-d float32 tensor there)."""
    if tensors:
        backends.named(backend).tensors_scale_(tensors, coef)


@scale_.register_fake
def _scale_fake(tensors, coef, backend):
    return None
