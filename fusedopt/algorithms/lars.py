"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks"): SGD with a
per-tensor trust ratio. A drop-in for mmpretrain's ``type='LARS'`` (SimCLR, BYOL, Barlow Twins,
MoCo configs), whose step reads two norms per tensor with ``.item()`` (322 host syncs per step on
ResNet-50); here both stay on the device (Note [two stages], csrc/algorithms.h)."""
import math

import torch

from fusedopt.algorithms.base import Algorithm, Column
from fusedopt.algorithms.sgd import check_nesterov, check_nesterov_column, momentum_step
from fusedopt.optimizer import FusedOptimizer


def norm(x):
    """|x|_2 summed in double (as the backends accumulate their per-tensor sums)."""
    return math.sqrt(x.double().square().sum().item())


def update(p, g, states, t, row, flags):
    """mmpretrain's LARS step for one tensor, op for op (Note [LARS], docs/internals.md)."""
    wd = row["weight_decay"]
    local_lr = 1.0
    if not row["exclude"]:
        weight_norm, grad_norm = norm(p), norm(g)
        if weight_norm != 0 and grad_norm != 0:
            local_lr = row["eta"] * weight_norm / (grad_norm + wd * weight_norm + row["eps"])
    d = g.add(p, alpha=wd).mul(row["lr"] * local_lr)
    d = momentum_step(d, states, t, row["momentum"], row["dampening"], flags["nesterov"])
    p.sub_(d)


ALGORITHM = Algorithm(
    name="lars", id=3, flag_names=("momentum", "nesterov", "maximize"),
    columns=(("lr", Column("lr")), ("weight_decay", Column("weight_decay")),
             ("momentum", Column("momentum", zero_flag=True)),
             ("dampening", Column("dampening", low=-math.inf)), ("eps", Column("eps")),
             ("eta", Column("eta")), ("exclude", Column("lars_exclude", high=1.0, boolean=True))),
    states=lambda f: ("momentum_buffer",) if f["momentum"] else (), update=update,
    group_flags=lambda g: {"momentum": g["momentum"] != 0, "nesterov": g["nesterov"],
                           "maximize": g["maximize"]},
    flag_keys=("nesterov", "maximize"), two_stage=True,
    rereads=lambda size, start, state: start + size)          # the norm pass reads p and g


class FusedLARS(FusedOptimizer, torch.optim.Optimizer):
    """mmpretrain's LARS arguments (``lr`` required, ``momentum``, ``weight_decay``,
    ``dampening``, ``eta``, ``nesterov``, ``eps``), plus ``maximize``, ``backend``,
    ``skip_nonfinite`` and ``master_weights`` (see FusedAdam). A group with
    ``lars_exclude=True`` (configs set it through ``paramwise_cfg.custom_keys`` for norms and
    biases) steps with local lr 1. State: ``momentum_buffer`` for groups with momentum != 0."""

    ALGORITHM = ALGORITHM
    _check_column = check_nesterov_column

    def __init__(self, params, lr, momentum=0, weight_decay=0, dampening=0, eta=1e-3,
                 nesterov=False, eps=1e-8, *, maximize=False, backend="auto",
                 skip_nonfinite=False, master_weights=False, state_dtype=None, kahan_sum=False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening,
                        eta=eta, nesterov=nesterov, eps=eps, lars_exclude=False,
                        maximize=maximize, skip_nonfinite=skip_nonfinite,
                        master_weights=master_weights,
                        state_dtype=state_dtype, kahan_sum=kahan_sum)
        self._check_group(defaults)
        check_nesterov(defaults)
        super().__init__(params, defaults, backend)


ALGORITHM.classes[:] = [FusedLARS]
