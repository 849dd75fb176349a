"""FusedAdam and FusedAdamW: drop-in torch.optim.Adam / AdamW with one fused step."""
import torch

from fusedopt import _hparams, functional
from fusedopt._hparams import Column
from fusedopt.optimizer import FusedOptimizer

__all__ = ["FusedAdam", "FusedAdamW"]


class FusedAdam(FusedOptimizer, torch.optim.Adam):
    """torch.optim.Adam's arguments and defaults (L2 weight decay unless
    ``decoupled_weight_decay=True``), plus ``backend``. ``foreach``, ``fused`` and ``capturable``
    are accepted for compatibility: the step is always fused, and capturable by construction
    (step counters live on the parameters' device). ``skip_nonfinite=True`` skips, on device,
    every step in which any grad is inf or nan, and counts them in ``skipped_steps``.
    ``master_weights=True`` keeps an fp32 copy of each fp16/bf16 param in
    ``state['master_param']`` and steps that copy (Note [master copy]); a no-op for fp32/fp64."""

    _COLUMNS = {
        _hparams.LR: Column("lr"),
        _hparams.WEIGHT_DECAY: Column("weight_decay"),
        _hparams.BETA1: Column("betas", 0, 0.0, 1.0, high_open=True),
        _hparams.BETA2: Column("betas", 1, 0.0, 1.0, high_open=True),
        _hparams.EPS: Column("eps"),
    }
    _FLAG_KEYS = ("amsgrad", "maximize", "decoupled_weight_decay", "master_weights")
    _HPARAM_SLOTS = {
        "lr": (_hparams.LR, "lr", None),
        "weight_decay": (_hparams.WEIGHT_DECAY, "weight_decay", None),
        "beta1": (_hparams.BETA1, "betas", 0),
        "momentum": (_hparams.BETA1, "betas", 0),   # mmengine's momentum schedulers on Adam
        "beta2": (_hparams.BETA2, "betas", 1),
        "eps": (_hparams.EPS, "eps", None),
    }

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False, backend="auto",
                 skip_nonfinite=False, master_weights=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        skip_nonfinite=skip_nonfinite, master_weights=master_weights)
        self._check_group(defaults)
        super().__init__(params, defaults, backend)

    @staticmethod
    def _check_pairs(group):
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")

    @staticmethod
    def _flags(group):
        return (("amsgrad", bool(group["amsgrad"])), ("maximize", bool(group["maximize"])),
                ("decoupled", bool(group["decoupled_weight_decay"])),
                ("master_weights", bool(group.get("master_weights"))))

    def _state_of(self, p, group):
        state = self.state.get(p)
        if not state or "exp_avg" not in state:
            return None
        # torch keeps 'step' on the CPU unless fused/capturable; fusedopt keeps it beside the
        # parameter (what torch's fused path does), so the bias correction is computed on device.
        step = state["step"]
        step = torch.as_tensor(step, dtype=torch.float32).to(p.device).reshape(())
        state["step"] = step
        states = [state["exp_avg"], state["exp_avg_sq"]]
        if group["amsgrad"]:
            states.append(state["max_exp_avg_sq"])
        return states + self._master_states(p, group), step

    def _new_state(self, p, group):
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _kernel(bucket, hp, **scalars):
        functional.adam(bucket, hp, **bucket.kwargs, **scalars)


class FusedAdamW(FusedAdam, torch.optim.AdamW):
    """torch.optim.AdamW's arguments and defaults (decoupled weight decay 1e-2), plus FusedAdam's
    ``backend``, ``skip_nonfinite`` and ``master_weights``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend="auto", skip_nonfinite=False,
                 master_weights=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, backend=backend,
                         skip_nonfinite=skip_nonfinite, master_weights=master_weights)
