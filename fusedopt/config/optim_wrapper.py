"""OptimWrapper / AmpOptimWrapper: mmengine 0.10's optimizer-wrapper API, standalone.

Same public methods, attributes and semantics as ``mmengine.optim.OptimWrapper`` /
``AmpOptimWrapper`` (accumulation and its last-iterations loss factor, clipping, get_lr,
state_dict with ``base_param_settings``, ``loss_scaler`` ...). What differs is speed, for
fusedopt's optimizers:

- Note [fused clip in the wrapper]: ``clip_grad=dict(type='norm', ...)`` calls the optimizer's
  own ``clip_grad_norm_``: one multi-tensor reduction, the coefficient applied inside the next
  step, and no host sync. The norm stays a 0-d tensor (``last_grad_norm``); it is turned into a
  float only when logged to mmengine's MessageHub (eagerly, like mmengine, unless
  ``lazy_logging`` is set: then ``flush_scalars()`` reads all pending norms with one sync).
- Note [fused AMP step]: with fp16 and a fusedopt optimizer there is no separate unscale pass.
  One norm reduction over the scaled grads gives found_inf (and, divided by the scale, the clip
  norm); the optimizer's step divides by the scale and applies the clip coefficient inline and
  skips itself on device when found_inf; GradScaler's dynamic scale update then runs unchanged.
- bf16 (and fp32/fp64) autocast needs no loss scaling: the scaler is created disabled.

Nothing here imports mmengine; when mmengine is already loaded, scalars go to its MessageHub.
"""
from __future__ import annotations

import logging
import numbers
import sys
from contextlib import contextmanager, nullcontext
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from torch.optim import Optimizer

from fusedopt.config.errors import ConfigTypeError, ConfigValueError
from fusedopt.config.registry import OPTIM_WRAPPERS

_CLIP_NORM_KEYS = ("max_norm", "norm_type", "error_if_nonfinite", "foreach")
_CLIP_VALUE_KEYS = ("clip_value", "foreach")


def _is_fused(optimizer) -> bool:
    from fusedopt.optimizer import FusedOptimizer
    return isinstance(optimizer, FusedOptimizer)


def _current_message_hub():
    """mmengine's current MessageHub if mmengine is already imported (never imports it)."""
    mod = sys.modules.get("mmengine.logging")
    if mod is None or not hasattr(mod, "MessageHub"):
        return None
    return mod.MessageHub.get_current_instance()


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class BaseOptimWrapper:
    """The part of mmengine's BaseOptimWrapper every wrapper shares: optimizer access,
    ``base_param_settings``, lrs/momenta and (de)serialisation."""

    # where warnings go; fusedopt.mmengine: mmengine's current MMLogger
    logger = logging.getLogger("fusedopt.config")

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        # mmengine: with several groups, a dummy group remembers the base hyper-parameters
        # (schedulers update it too, and get_lr reports it as 'base_lr')
        if len(optimizer.param_groups) > 1:
            self.base_param_settings = {"params": torch.tensor([0.0], dtype=torch.float)}
            self.base_param_settings.update(**self.optimizer.defaults)
        else:
            self.base_param_settings = None

    def __getstate__(self):
        # a scheduler's step counter (Note [step order warnings], schedulers/base.py) wraps this
        # object's step and counts for it alone: a copy or an unpickled wrapper starts without
        state = dict(self.__dict__)
        state.pop("step", None)
        return state

    def update_params(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        raise NotImplementedError

    def zero_grad(self, **kwargs) -> None:
        raise NotImplementedError

    def step(self, **kwargs):
        raise NotImplementedError

    def state_dict(self) -> dict:
        state_dict = self.optimizer.state_dict()
        if self.base_param_settings is not None:
            state_dict["base_param_settings"] = self.base_param_settings
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        base_param_settings = state_dict.pop("base_param_settings", None)
        if base_param_settings is not None:
            self.base_param_settings = base_param_settings
        self.optimizer.load_state_dict(state_dict)

    @property
    def param_groups(self) -> List[dict]:
        if self.base_param_settings is not None:
            return self.optimizer.param_groups + [self.base_param_settings]
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def get_lr(self) -> Dict[str, List[float]]:
        res = {}
        if self.base_param_settings is not None:
            res["base_lr"] = [self.base_param_settings["lr"]]
        res["lr"] = [group["lr"] for group in self.optimizer.param_groups]
        return res

    def get_momentum(self) -> Dict[str, List[float]]:
        momentum = []
        for group in self.optimizer.param_groups:
            if "momentum" in group:
                momentum.append(group["momentum"])
            elif "betas" in group:
                momentum.append(group["betas"][0])
            else:
                momentum.append(0)
        return dict(momentum=momentum)


@OPTIM_WRAPPERS.register_module()
class OptimWrapper(BaseOptimWrapper):
    """Optimizer wrapper with gradient accumulation and clipping (mmengine semantics).

    Args:
        optimizer: the optimizer to wrap.
        accumulative_counts: update every this many ``update_params`` calls (>= 1); the loss is
            divided by it (by the remainder for the last iterations, once
            ``initialize_count_status`` told the total).
        clip_grad: ``dict(max_norm=..., norm_type=2)`` (``type='norm'``, the default) or
            ``dict(type='value', clip_value=...)``.
    """

    def __init__(self, optimizer: Optimizer, accumulative_counts: int = 1,
                 clip_grad: Optional[dict] = None):
        if isinstance(accumulative_counts, bool) or not isinstance(accumulative_counts,
                                                                   numbers.Integral):
            raise ConfigTypeError("optim_wrapper.accumulative_counts should be an int, "
                                  f"but got {accumulative_counts!r}")
        if accumulative_counts < 1:
            raise ConfigValueError("optim_wrapper.accumulative_counts should be >= 1 "
                                   "(_accumulative_counts at least greater than or equal to 1), "
                                   f"but got {accumulative_counts}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError("optim_wrapper.optimizer should be a torch.optim.Optimizer, "
                            f"but got {type(optimizer)}")
        self._accumulative_counts = int(accumulative_counts)
        self.optimizer = optimizer

        self.clip_func = None
        self.grad_name = None
        if clip_grad is not None:
            if not isinstance(clip_grad, dict) or not clip_grad:
                raise ConfigValueError(
                    "If `clip_grad` is not None, it should be a `dict` which is the arguments of "
                    "`torch.nn.utils.clip_grad_norm_` or clip_grad_value_` "
                    f"(optim_wrapper.clip_grad), but got {clip_grad!r}")
            clip_grad = dict(clip_grad)          # mmengine pops from the caller's dict; we copy
            clip_type = clip_grad.pop("type", "norm")
            if clip_type == "norm":
                self.clip_func, self.grad_name, keys = (torch.nn.utils.clip_grad_norm_,
                                                        "grad_norm", _CLIP_NORM_KEYS)
                required = "max_norm"
            elif clip_type == "value":
                self.clip_func, self.grad_name, keys = (torch.nn.utils.clip_grad_value_,
                                                        "grad_value", _CLIP_VALUE_KEYS)
                required = "clip_value"
            else:
                raise ValueError('type of clip_grad should be "norm" or "value" but got '
                                 f"{clip_type} (optim_wrapper.clip_grad.type)")
            if not clip_grad:
                raise ConfigValueError(
                    "`clip_grad` should contain other arguments besides `type`. The arguments "
                    "should match with the `torch.nn.utils.clip_grad_norm_` or clip_grad_value_` "
                    "(optim_wrapper.clip_grad)")
            for k in clip_grad:
                if k not in keys:
                    raise ConfigTypeError(f"optim_wrapper.clip_grad got an unexpected key {k!r} "
                                          f"for type={clip_type!r}; accepted: {', '.join(keys)}")
            if required not in clip_grad:
                raise ConfigValueError(f"optim_wrapper.clip_grad (type={clip_type!r}) must "
                                       f"contain {required!r}")
        self.clip_grad_kwargs = clip_grad
        self.message_hub = _current_message_hub()
        # Note [fused clip in the wrapper]: the last norm, a 0-d tensor (no host sync)
        self.last_grad_norm: Optional[torch.Tensor] = None
        self.lazy_logging = False
        self._pending_scalars: list = []
        self._inner_count = 0
        self._max_counts = -1
        self._remainder_counts = -1
        if len(optimizer.param_groups) > 1:
            self.base_param_settings = {"params": torch.tensor([0.0], dtype=torch.float)}
            self.base_param_settings.update(**self.optimizer.defaults)
        else:
            self.base_param_settings = None

    # -- the update ---------------------------------------------------------------------------
    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None) -> None:
        """scale_loss -> backward -> (step -> zero_grad when should_update())."""
        step_kwargs = {} if step_kwargs is None else step_kwargs
        zero_kwargs = {} if zero_kwargs is None else zero_kwargs
        loss = self.scale_loss(loss)
        self.backward(loss)
        if self.should_update():
            self.step(**step_kwargs)
            self.zero_grad(**zero_kwargs)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        loss.backward(**kwargs)
        self._inner_count += 1

    def zero_grad(self, **kwargs) -> None:
        self.optimizer.zero_grad(**kwargs)

    def step(self, **kwargs) -> None:
        if self.clip_grad_kwargs:
            self._clip_grad()
        self.optimizer.step(**kwargs)

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Skips DDP's gradient all-reduce (``model.no_sync()``) on accumulation iterations."""
        if not self.should_sync() and hasattr(model, "no_sync"):
            with model.no_sync():
                yield
        else:
            yield

    # -- clipping -----------------------------------------------------------------------------
    def _fused_clip_ok(self) -> bool:
        return (self.grad_name == "grad_norm" and _is_fused(self.optimizer)
                and hasattr(self.optimizer, "clip_grad_norm_"))

    def _clip_grad(self) -> None:
        if self._fused_clip_ok():
            kwargs = {k: v for k, v in self.clip_grad_kwargs.items() if k != "foreach"}
            norm = self.optimizer.clip_grad_norm_(**kwargs)
            self._record_scalar(f"train/{self.grad_name}", norm)
            return
        params: List[torch.Tensor] = []
        for group in self.optimizer.param_groups:
            params.extend(group["params"])
        params = [p for p in params if p.requires_grad and p.grad is not None]
        if params:
            grad = self.clip_func(params, **self.clip_grad_kwargs)
            if grad is not None:     # clip_grad_value_ returns None
                self._record_scalar(f"train/{self.grad_name}", grad)

    def _record_scalar(self, key: str, value: torch.Tensor) -> None:
        if self.grad_name == "grad_norm":
            self.last_grad_norm = value
        if self.message_hub is None:
            return
        if self.lazy_logging:
            self._pending_scalars.append((key, value.detach()))
        else:
            self.message_hub.update_scalar(key, float(value))

    def flush_scalars(self) -> None:
        """Push pending logged scalars to the MessageHub, reading them with one sync."""
        pending, self._pending_scalars = self._pending_scalars, []
        if not pending or self.message_hub is None:
            return
        by_device: dict = {}
        for i, (_, v) in enumerate(pending):
            by_device.setdefault(v.device, []).append(i)
        values: list = [None] * len(pending)
        for idx in by_device.values():     # one host read per device
            for i, x in zip(idx, torch.stack([pending[i][1].float().reshape(())
                                              for i in idx]).tolist()):
                values[i] = x
        for (key, _), value in zip(pending, values):
            self.message_hub.update_scalar(key, value)

    # -- accumulation -------------------------------------------------------------------------
    def initialize_count_status(self, model: nn.Module, init_counts: int, max_counts: int) -> None:
        """Tell the wrapper where training resumes and how many iterations it has, so the last
        ``max_counts % accumulative_counts`` iterations divide the loss by that remainder."""
        self._inner_count = init_counts
        self._max_counts = max_counts
        if self._inner_count % self._accumulative_counts != 0:
            self.logger.warning("Resumed iteration number is not divisible by "
                                "`_accumulative_counts`, which means the gradient of some "
                                "iterations is lost and the result may be influenced slightly.")
        if _has_batch_norm(model) and self._accumulative_counts > 1:
            self.logger.warning("Gradient accumulative may slightly decrease performance "
                                "because the model has BatchNorm layers.")
        self._remainder_counts = self._max_counts % self._accumulative_counts

    def should_update(self) -> bool:
        return (self._inner_count % self._accumulative_counts == 0
                or self._inner_count == self._max_counts)

    def should_sync(self) -> bool:
        return ((self._inner_count + 1) % self._accumulative_counts == 0
                or (self._inner_count + 1) == self._max_counts)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self._accumulative_counts == 1:
            loss_factor = 1
        elif self._max_counts == -1:
            loss_factor = self._accumulative_counts
        else:
            if self._inner_count < self._max_counts - self._remainder_counts:
                loss_factor = self._accumulative_counts
            else:
                loss_factor = self._remainder_counts
            if not loss_factor > 0:
                raise ConfigValueError(
                    "loss_factor should be larger than zero! This error could happened when "
                    "initialize_count_status called with an error `init_counts` or `max_counts`")
        return loss / loss_factor

    @property
    def inner_count(self):
        return self._inner_count

    def __repr__(self):
        return (f"Type: {type(self).__name__}\n"
                f"_accumulative_counts: {self._accumulative_counts}\n"
                "optimizer: \n" + repr(self.optimizer) + "\n")


def _optimizer_device(optimizer: Optimizer) -> torch.device:
    for group in optimizer.param_groups:
        for p in group["params"]:
            return p.device
    return torch.device("cpu")


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(OptimWrapper):
    """Mixed precision (mmengine semantics): ``optim_context`` runs autocast; fp16 scales the
    loss with a GradScaler (``loss_scale='dynamic'``, a float for a static scale, or a dict of
    GradScaler arguments); bf16/fp32 need no scaling, so the scaler is disabled.

    Unlike mmengine's it also runs on CPU (``torch.amp.GradScaler`` of the params' device).
    """

    valid_dtypes = ("float16", "bfloat16", "float32", "float64")

    def __init__(self, loss_scale: Union[str, float, dict] = "dynamic",
                 dtype: Union[str, torch.dtype, None] = None, use_fsdp: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._scale_update_param = None
        if isinstance(dtype, str):
            if dtype not in self.valid_dtypes:
                raise ConfigValueError(f"optim_wrapper.dtype should be any of {self.valid_dtypes}, "
                                       f"got {dtype}")
            dtype = getattr(torch, dtype)
        if not (dtype is None or isinstance(dtype, torch.dtype)):
            raise ConfigTypeError(f"optim_wrapper.dtype should be None or instance of "
                                  f"torch.dtype, got {dtype}")
        self.cast_dtype = dtype
        self.device_type = _optimizer_device(self.optimizer).type
        if dtype is None:
            eff = torch.float16 if self.device_type != "cpu" else torch.get_autocast_dtype("cpu")
        else:
            eff = dtype
        self._autocast_dtype = eff
        enabled = eff == torch.float16

        if use_fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            scaler_type = ShardedGradScaler
        else:
            scaler_type = torch.amp.GradScaler
        if loss_scale == "dynamic":
            self.loss_scaler = scaler_type(self.device_type, enabled=enabled)
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            self.loss_scaler = scaler_type(self.device_type, init_scale=loss_scale,
                                           enabled=enabled)
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
            scaler_kwargs.setdefault("enabled", enabled)
            self.loss_scaler = scaler_type(self.device_type, **scaler_kwargs)
        else:
            raise TypeError("loss_scale must be of type float, dict, or "
                            f'"dynamic", but got {loss_scale} (optim_wrapper.loss_scale)')

    def backward(self, loss: torch.Tensor, **kwargs):
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def _fused_amp_ok(self) -> bool:
        opt = self.optimizer
        return (self.loss_scaler.is_enabled() and _is_fused(opt)
                and getattr(self.loss_scaler, "_scale", None) is not None
                and (not self.clip_grad_kwargs or self.grad_name == "grad_norm"))

    def step(self, **kwargs):
        if not self.loss_scaler.is_enabled():
            super().step(**kwargs)       # bf16 / fp32: nothing to unscale
            return
        if self._fused_amp_ok():
            self._fused_amp_step(**kwargs)
            return
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)

    def _fused_amp_step(self, **kwargs):
        """Note [fused AMP step]."""
        from torch.amp.grad_scaler import OptState

        opt, scaler = self.optimizer, self.loss_scaler
        state = scaler._per_optimizer_states[id(opt)]
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        scale = scaler._scale
        if self.clip_grad_kwargs:
            kw = self.clip_grad_kwargs
            norm = opt.clip_grad_norm_(kw["max_norm"], kw.get("norm_type", 2.0),
                                       kw.get("error_if_nonfinite", False), grad_scale=scale)
            self._record_scalar(f"train/{self.grad_name}", norm)
        else:
            norm = opt.grad_norm(float("inf"))   # the inf-norm cannot overflow: found_inf only
        found_inf = (~torch.isfinite(norm)).to(device=scale.device, dtype=torch.float32)
        opt.grad_scale = scale
        opt.found_inf = found_inf
        try:
            opt.step(**kwargs)
        finally:
            del opt.grad_scale
            del opt.found_inf
        state["found_inf_per_device"] = {found_inf.device: found_inf}
        state["stage"] = OptState.STEPPED
        scaler.update(self._scale_update_param)

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["loss_scaler"] = self.loss_scaler.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict):
        if "loss_scaler" in state_dict:
            loss_scaler = state_dict.pop("loss_scaler")
            if loss_scaler:               # a disabled scaler's state is {}
                self.loss_scaler.load_state_dict(loss_scaler)
        if "base_param_settings" in state_dict:
            self.base_param_settings = state_dict.pop("base_param_settings")
        self.optimizer.load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        eff = self._autocast_dtype
        if eff in (torch.float32, torch.float64):
            ctx = nullcontext()
        else:
            ctx = torch.autocast(device_type=self.device_type, dtype=eff)
        with super().optim_context(model), ctx:
            yield


__all__ = ["BaseOptimWrapper", "OptimWrapper", "AmpOptimWrapper"]
