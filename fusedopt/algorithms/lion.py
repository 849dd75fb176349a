"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2): the sign
of an interpolated momentum, one state. The oracle follows the paper's pseudo-code as lion-pytorch
(the package mmengine's test extras install) writes it, op for op."""
import torch

from fusedopt.algorithms.adam import check_betas
from fusedopt.algorithms.base import Algorithm, Column
from fusedopt.optimizer import FusedOptimizer


def update(p, g, states, t, row, flags):
    lr, beta1, beta2 = row["lr"], row["beta1"], row["beta2"]
    exp_avg = states[0]
    p.mul_(1 - lr * row["weight_decay"])                    # decoupled decay; 1 is exact
    direction = exp_avg.clone().mul_(beta1).add(g, alpha=1 - beta1).sign_()
    p.add_(direction, alpha=-lr)
    exp_avg.mul_(beta2).add_(g, alpha=1 - beta2)


ALGORITHM = Algorithm(
    name="lion", id=2, flag_names=("maximize",),
    columns=(("lr", Column("lr")), ("weight_decay", Column("weight_decay")),
             ("beta1", Column("betas", 0, 0.0, 1.0)), ("beta2", Column("betas", 1, 0.0, 1.0))),
    states=lambda f: ("exp_avg",), update=update,
    group_flags=lambda g: {"maximize": g["maximize"]}, flag_keys=("maximize",),
    aliases={"momentum": "beta1"})


class FusedLion(FusedOptimizer, torch.optim.Optimizer):
    """Lion: ``lr`` (3-10x smaller than AdamW's), ``betas``, decoupled ``weight_decay`` (3-10x
    larger than AdamW's), plus ``maximize``, ``backend``, ``skip_nonfinite`` and
    ``master_weights`` (see FusedAdam). State: ``exp_avg``, as lion-pytorch's."""

    ALGORITHM = ALGORITHM
    _check_pairs = staticmethod(check_betas)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 backend="auto", skip_nonfinite=False, master_weights=False, state_dtype=None, kahan_sum=False):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        skip_nonfinite=skip_nonfinite, master_weights=master_weights,
                        state_dtype=state_dtype, kahan_sum=kahan_sum)
        self._check_group(defaults)
        super().__init__(params, defaults, backend)


ALGORITHM.classes[:] = [FusedLion]
