"""SGD with momentum, dampening and Nesterov momentum: drop-in torch.optim.SGD."""
import math

import torch

from fusedopt.algorithms.base import Algorithm, Column
from fusedopt.optimizer import FusedOptimizer, host_number


def momentum_step(g, states, t, momentum, dampening, nesterov):
    """The momentum buffer of torch's SGD (and mmpretrain's LARS): seeded with ``g`` on the first
    step (torch's ``clone(grad)``, no dampening), blended afterwards. Returns the direction."""
    if not states:
        return g
    buf = states[0]
    if t == 1:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g, alpha=1 - dampening)
    return g.add(buf, alpha=momentum) if nesterov else buf


def update(p, g, states, t, row, flags):
    """torch.optim.sgd._single_tensor_sgd, op for op."""
    if row["weight_decay"] != 0:
        g = g.add(p, alpha=row["weight_decay"])
    g = momentum_step(g, states, t, row["momentum"], row["dampening"], flags["nesterov"])
    p.add_(g, alpha=-row["lr"])


ALGORITHM = Algorithm(
    name="sgd", id=1, flag_names=("momentum", "nesterov", "maximize"),
    columns=(("lr", Column("lr")), ("weight_decay", Column("weight_decay")),
             ("momentum", Column("momentum", zero_flag=True)),   # momentum != 0 keeps buffers
             ("dampening", Column("dampening", low=-math.inf))),
    states=lambda f: ("momentum_buffer",) if f["momentum"] else (),
    update=update,
    group_flags=lambda g: {"momentum": g["momentum"] != 0, "nesterov": g["nesterov"],
                           "maximize": g["maximize"]},
    flag_keys=("nesterov", "maximize"))


def check_nesterov(group):
    """torch's rule for the defaults: Nesterov momentum needs a momentum and no dampening."""
    momentum, dampening = host_number(group["momentum"]), host_number(group["dampening"])
    if group["nesterov"] and (momentum <= 0 or dampening != 0):
        raise ValueError("Invalid nesterov=True: Nesterov momentum requires a momentum and "
                         f"zero dampening; got momentum={group['momentum']}, "
                         f"dampening={group['dampening']}")


def check_nesterov_column(optimizer, column, values):
    """set_hparam only, fusedopt's own call: a dict write or a scheduler may leave a nesterov
    group without momentum or with dampening, as torch allows (it checks its defaults only);
    set_hparam refuses the value that would silently change what nesterov does."""
    names = optimizer.ALGORITHM.column_names
    if names[column] not in ("momentum", "dampening"):
        return
    bad = values <= 0 if names[column] == "momentum" else values != 0
    if not bool(bad.any()):
        return
    for row, group in enumerate(optimizer.param_groups):
        if group["nesterov"] and bad[row]:
            raise ValueError(f"set_hparam: param_groups[{row}] has nesterov=True, which "
                             "requires momentum > 0 and dampening == 0; got "
                             f"{values[row].item()!r}")


class FusedSGD(FusedOptimizer, torch.optim.SGD):
    """torch.optim.SGD's arguments and defaults, plus ``backend``, ``skip_nonfinite`` and
    ``master_weights`` (see FusedAdam). State is torch's: ``momentum_buffer`` for groups with
    momentum != 0, nothing otherwise (and ``master_param`` with master weights)."""

    ALGORITHM = ALGORITHM

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None, backend="auto",
                 skip_nonfinite=False, master_weights=False, state_dtype=None, kahan_sum=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused, skip_nonfinite=skip_nonfinite,
                        master_weights=master_weights,
                        state_dtype=state_dtype, kahan_sum=kahan_sum)
        self._check_group(defaults)
        # As torch, only the defaults: a group may set nesterov=True beside an inherited
        # dampening, and then steps with both (torch's for-loop math does).
        check_nesterov(defaults)
        super().__init__(params, defaults, backend)

    _check_column = check_nesterov_column


ALGORITHM.classes[:] = [FusedSGD]
