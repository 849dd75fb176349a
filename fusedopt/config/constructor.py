"""DefaultOptimWrapperConstructor: mmengine's parameter-wise rules, standalone.

The rules (which param gets which lr / weight_decay) follow mmengine 0.10's
``DefaultOptimWrapperConstructor`` exactly; see ``add_params``. Differences, all stricter or
documented in the tutorial: unknown top-level ``paramwise_cfg`` keys raise, a near-miss of a
multiplier inside a ``custom_keys`` entry raises (Note [custom_keys entries]), unknown optimizer
keyword arguments raise before the optimizer is built, ``constructor=dict(type=...)`` works, and
the top-level ``lr_mult`` / ``decay_mult`` keys the tutorial documents ("all parameters") are
applied (mmengine accepts and ignores them).

Note [paramwise keys of subclasses]: the unknown-key check knows the keys of the default rules
(``paramwise_keys``). A subclass that reads keys of its own declares them::

    class MyConstructor(DefaultOptimWrapperConstructor):
        paramwise_keys = DefaultOptimWrapperConstructor.paramwise_keys + ("conv1_lr_mult",)

A subclass that overrides ``__call__`` or ``add_params`` (the methods that read
``paramwise_cfg``) without declaring ``paramwise_keys`` is not checked, since the keys it
reads are unknown here: mmengine's custom constructors work unchanged.

Note [custom_keys entries]: every key of an entry goes into the param group, as mmengine copies
it; the optimizer (or a hook) decides what it means: ``lars_exclude`` for LARS, SimSiam's
``fix_lr`` for its hook, ``momentum`` for SGD. torch.optim keeps keys it does not read in
``param_groups`` and its state_dict, and so do fusedopt's optimizers. One kind of key is
refused: a near-miss of a paramwise multiplier that the optimizer does not take
(``lr_mul``: "did you mean 'lr_mult'"), or a top-level multiplier put inside an entry
(``norm_decay_mult``, which only ``paramwise_cfg`` itself reads). Such a key is an error, not a
warning: the multiplier it was meant to be never applies, so training runs on with a wrong lr or
weight decay (``lr_mul=0`` meant to freeze a backbone trains it), which no later check can tell;
a warning is one line among a run's thousands of log lines. The cost of refusing is a rename, at
build time, of a tag that looks like a misspelt multiplier. None of the 196 entries in the 157
distinct optim_wrappers of mmpretrain's and mmaction2's configs is refused (their keys:
decay_mult, lr_mult, lars_exclude, fix_lr; ``scripts/real_configs.py``).
"""
from __future__ import annotations

import difflib
import inspect
import logging
import numbers
from typing import Optional

from torch import nn

from fusedopt.config.errors import ConfigTypeError, ConfigValueError, UnknownTypeError
from fusedopt.config.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm, nn.LayerNorm)

# the keys paramwise_cfg understands; anything else is a typo
PARAMWISE_KEYS = ("custom_keys", "lr_mult", "decay_mult", "bias_lr_mult", "bias_decay_mult",
                  "norm_decay_mult", "dwconv_decay_mult", "flat_decay_mult", "dcn_offset_lr_mult",
                  "bypass_duplicate")
_MULT_KEYS = tuple(k for k in PARAMWISE_KEYS if k.endswith("_mult"))
# the multipliers a custom_keys entry applies (Note [custom_keys entries])
_ENTRY_MULT_KEYS = ("lr_mult", "decay_mult")
# difflib similarity at or above which an entry key counts as a misspelt multiplier: one or two
# characters off a 7-18 character multiplier scores 0.92-0.96 (lr_mul, decay_mul, lr_multi,
# bias_lr_mul); differently named keys stay below: conv1_lr_mult, decay_rate, decay_type 0.70,
# weight_decay_mult 0.75, layer_decay 0.62, fix_lr 0.44, lars_exclude 0.42
_NEAR_MISS = 0.8


def _is_delete_slip(key) -> bool:
    """``key`` is a misspelling of mmengine's Config directive ``_delete_``."""
    return isinstance(key, str) and bool(difflib.get_close_matches(key, ["_delete_"],
                                                                   cutoff=_NEAR_MISS))


def is_dcn_module(module: nn.Module) -> bool:
    """mmcv's (Modulated)DeformConv2d, recognised by class without importing mmcv (which
    would import mmengine)."""
    return any(c.__name__ in ("DeformConv2d", "ModulatedDeformConv2d")
               and c.__module__.startswith("mmcv") for c in type(module).__mro__)


def _optimizer_kwargs_check(optimizer_cls, cfg: dict, first_arg: str) -> None:
    """Raise TypeError naming a keyword the optimizer does not take (before building it)."""
    try:
        sig = inspect.signature(optimizer_cls)
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [n for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in cfg:
        if key in ("type", "_scope_", first_arg):
            continue
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            name = getattr(optimizer_cls, "__name__", optimizer_cls)
            raise ConfigTypeError(
                f"optim_wrapper.optimizer: {name} got an unexpected keyword argument {key!r}."
                f"{hint} It accepts: {', '.join(a for a in accepted if a != first_arg)}")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DefaultOptimWrapperConstructor:
    """Build an optimizer wrapper from ``optim_wrapper_cfg`` with ``paramwise_cfg`` rules.

    Without ``paramwise_cfg`` all of ``model.parameters()`` form one group. With it, every
    parameter that requires grad gets its own group, whose ``lr`` / ``weight_decay`` follow:

    - ``custom_keys``: the longest key (ties: alphabetically first) that is a substring of the
      parameter's full name decides, and no other rule applies; the key's dict is copied into
      the group, ``lr = base_lr * lr_mult`` and ``weight_decay = base_wd * decay_mult``.
    - otherwise ``bias_lr_mult`` (biases outside norm / DCN layers), ``dcn_offset_lr_mult``
      (``conv_offset`` of mmcv DCNs), and the first applicable of ``norm_decay_mult``,
      ``bias_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult`` (1-d params); the
      tutorial's ``lr_mult`` / ``decay_mult`` multiply these for every such parameter.
    - ``bypass_duplicate``: a parameter already in a group is skipped (shared weights).
    - frozen parameters are skipped; ``model.module`` (DDP and friends) is unwrapped.

    With fusedopt's optimizers one group per parameter costs nothing per step (one table row).
    """

    # the registries used to build; fusedopt.mmengine points its subclass at mmengine's
    optimizers_registry = OPTIMIZERS
    wrappers_registry = OPTIM_WRAPPERS
    # the paramwise_cfg keys this class reads (Note [paramwise keys of subclasses])
    paramwise_keys: tuple = PARAMWISE_KEYS
    # where warnings and paramwise_options go; fusedopt.mmengine: mmengine's current MMLogger
    logger = logging.getLogger("fusedopt.config")

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        if not isinstance(optim_wrapper_cfg, dict):
            raise TypeError("optimizer_cfg should be a dict, "
                            f"but got {type(optim_wrapper_cfg)}")
        if "optimizer" not in optim_wrapper_cfg:
            raise ConfigValueError('`optim_wrapper_cfg` must contain "optimizer" config '
                                   "(the key optim_wrapper.optimizer is missing)")
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.optimizer_cfg = self.optim_wrapper_cfg.pop("optimizer")
        if not isinstance(self.optimizer_cfg, dict):
            raise TypeError("optim_wrapper.optimizer should be a dict, "
                            f"but got {type(self.optimizer_cfg)}")
        self.paramwise_cfg = {} if paramwise_cfg is None else paramwise_cfg
        self.base_lr = self.optimizer_cfg.get("lr", None)
        self.base_wd = self.optimizer_cfg.get("weight_decay", None)
        self._validate_cfg()

    # -- validation ---------------------------------------------------------------------------
    @classmethod
    def _checks_keys(cls) -> bool:
        """Note [paramwise keys of subclasses]: check unless a class below the one declaring
        ``paramwise_keys`` overrides a method that reads paramwise_cfg."""
        mro = cls.__mro__
        declared = next(i for i, c in enumerate(mro) if "paramwise_keys" in vars(c))
        readers = [next(i for i, c in enumerate(mro) if m in vars(c))
                   for m in ("__call__", "add_params")]
        return declared <= min(readers)

    def _optimizer_arg_names(self) -> Optional[list]:
        """The keyword arguments of the configured optimizer (what a custom_keys entry may set
        besides lr_mult/decay_mult), or None when they cannot be known here."""
        opt_type = self.optimizer_cfg.get("type")
        try:
            cls = (self.optimizers_registry.get(opt_type) if isinstance(opt_type, str)
                   else opt_type)
            params = inspect.signature(cls).parameters.values()
        except (KeyError, TypeError, ValueError):    # unknown type: __call__ reports it
            return None
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @staticmethod
    def _unknown_keys_error(where: str, unknown: list, known) -> ConfigValueError:
        msgs = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), known, n=1)
            msgs.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return ConfigValueError(f"{where} has unknown key(s) {', '.join(msgs)}; "
                                f"known keys: {', '.join(known)}")

    @staticmethod
    def _check_entry_keys(key, entry: dict, arg_names) -> None:
        """Note [custom_keys entries]: raise for a key of ``entry`` that is, or looks like, a
        paramwise multiplier other than lr_mult/decay_mult and is no argument of the optimizer."""
        bad = []
        for k in entry:
            if not isinstance(k, str) or k in _ENTRY_MULT_KEYS or k in arg_names:
                continue
            close = k if k in _MULT_KEYS else next(
                iter(difflib.get_close_matches(k, _MULT_KEYS, n=1, cutoff=_NEAR_MISS)), None)
            if close in _ENTRY_MULT_KEYS:
                bad.append(f"{k!r} (did you mean {close!r}?)")
            elif close is not None:
                bad.append(f"{k!r} ({'' if close == k else f'like {close!r}, '}"
                           "a top-level paramwise_cfg key)")
        if bad:
            raise ConfigValueError(
                f"paramwise_cfg.custom_keys[{key!r}] has misspelt or misplaced multiplier "
                f"key(s) {', '.join(bad)}: an entry applies lr_mult and decay_mult, and its "
                "other keys go into the param group for the optimizer")

    def _validate_cfg(self) -> None:
        cfg = self.paramwise_cfg
        if not isinstance(cfg, dict):
            raise TypeError("paramwise_cfg should be None or a dict, "
                            f"but got {type(cfg)}")
        checks_keys = self._checks_keys()
        unknown = [k for k in cfg if k not in self.paramwise_keys] if checks_keys else []
        for k in [k for k in unknown if _is_delete_slip(k)]:
            # mmpretrain's Twins configs write `_delete=True`: the base config's paramwise_cfg
            # (flat_decay_mult, custom_keys) was merged in when the config loaded, too early for
            # a constructor to refuse; mmengine ignores the key, so fusedopt builds the same
            self.logger.warning(
                f"paramwise_cfg.{k} is ignored: mmengine's Config reads '_delete_' when it merges "
                "a config into its _base_, so this paramwise_cfg was merged into the base's "
                "instead of replacing it")
            unknown.remove(k)
        if unknown:
            raise self._unknown_keys_error("paramwise_cfg", unknown, self.paramwise_keys)
        for k in _MULT_KEYS:
            v = cfg.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise TypeError(f"paramwise_cfg.{k} should be a number, but got {v!r}")
        if not isinstance(cfg.get("bypass_duplicate", False), bool):
            raise TypeError("paramwise_cfg.bypass_duplicate should be a bool, "
                            f"but got {cfg['bypass_duplicate']!r}")
        if "custom_keys" in cfg:
            custom_keys = cfg["custom_keys"]
            if not isinstance(custom_keys, dict):
                raise TypeError("If specified, custom_keys must be a dict, "
                                f"but got {type(custom_keys)}")
            # Note [custom_keys entries]: keys pass through, near-misses of multipliers raise
            arg_names = self._optimizer_arg_names() if checks_keys and custom_keys else None
            for key, value in custom_keys.items():
                if not isinstance(value, dict):
                    raise TypeError(f"paramwise_cfg.custom_keys[{key!r}] should be a dict, "
                                    f"but got {type(value)}")
                if checks_keys:
                    self._check_entry_keys(key, value, arg_names or ())
                for m in ("lr_mult", "decay_mult"):
                    v = value.get(m)
                    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                        raise TypeError(f"paramwise_cfg.custom_keys[{key!r}].{m} should be a "
                                        f"number, but got {v!r}")
                if self.base_wd is None and "decay_mult" in value:
                    raise ValueError("base_wd should not be None: paramwise_cfg.custom_keys"
                                     f"[{key!r}] sets decay_mult but optim_wrapper.optimizer "
                                     "has no weight_decay")
                if self.base_lr is None and custom_keys:
                    raise ValueError("base_lr should not be None: paramwise_cfg.custom_keys"
                                     f"[{key!r}] needs optim_wrapper.optimizer.lr")
        for k in ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult"):
            if k in cfg and self.base_wd is None:
                raise ValueError(f"base_wd should not be None: paramwise_cfg.{k} is set but "
                                 "optim_wrapper.optimizer has no weight_decay")
        for k in ("bias_lr_mult", "dcn_offset_lr_mult", "lr_mult"):
            if cfg.get(k) is not None and self.base_lr is None:
                raise ValueError(f"base_lr should not be None: paramwise_cfg.{k} is set but "
                                 "optim_wrapper.optimizer has no lr")

    # -- the rules ----------------------------------------------------------------------------
    @staticmethod
    def _is_in(param_group: dict, param_group_list: list) -> bool:
        param = set(param_group["params"])
        seen = set()
        for group in param_group_list:
            seen.update(group["params"])
        return not param.isdisjoint(seen)

    def add_params(self, params: list, module: nn.Module, prefix: str = "",
                   is_dcn_module=None) -> None:
        """Append one group per parameter of ``module`` (recursively) to ``params``."""
        cfg = self.paramwise_cfg
        custom_keys = cfg.get("custom_keys", {})
        # longest first; equal lengths alphabetically
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        bias_lr_mult = cfg.get("bias_lr_mult", None)
        bias_decay_mult = cfg.get("bias_decay_mult", None)
        norm_decay_mult = cfg.get("norm_decay_mult", None)
        dwconv_decay_mult = cfg.get("dwconv_decay_mult", None)
        flat_decay_mult = cfg.get("flat_decay_mult", None)
        bypass_duplicate = cfg.get("bypass_duplicate", False)
        dcn_offset_lr_mult = cfg.get("dcn_offset_lr_mult", None)
        lr_mult = cfg.get("lr_mult", None)
        decay_mult = cfg.get("decay_mult", None)

        is_norm = isinstance(module, _NORM_TYPES)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups

        for name, param in module.named_parameters(recurse=False):
            full_name = f"{prefix}.{name}" if prefix else name
            group = {"params": [param]}
            if bypass_duplicate and self._is_in(group, params):
                self.logger.warning(f"{prefix} is duplicate. It is skipped since "
                                    "bypass_duplicate=True")
                continue
            if not param.requires_grad:
                self.logger.warning(f"{prefix}.{name} is skipped since its requires_grad=False")
                continue

            matched = None
            for key in sorted_keys:
                if key in f"{prefix}.{name}":
                    matched = key
                    break
            if matched is not None:
                rule = custom_keys[matched]
                group["lr"] = self.base_lr * rule.get("lr_mult", 1.0)
                if self.base_wd is not None:
                    group["weight_decay"] = self.base_wd * rule.get("decay_mult", 1.0)
                group.update(rule)
            else:
                lr_factor = 1.0 if lr_mult is None else lr_mult
                wd_factor = 1.0 if decay_mult is None else decay_mult
                if lr_mult is not None:
                    group["lr"] = self.base_lr * lr_mult
                if name == "bias" and not (is_norm or is_dcn_module) and bias_lr_mult is not None:
                    group["lr"] = self.base_lr * lr_factor * bias_lr_mult
                if (prefix.find("conv_offset") != -1 and is_dcn_module
                        and dcn_offset_lr_mult is not None and isinstance(module, nn.Conv2d)):
                    group["lr"] = self.base_lr * lr_factor * dcn_offset_lr_mult
                if self.base_wd is not None:
                    if decay_mult is not None:
                        group["weight_decay"] = self.base_wd * decay_mult
                    if is_norm and norm_decay_mult is not None:
                        group["weight_decay"] = self.base_wd * wd_factor * norm_decay_mult
                    elif name == "bias" and not is_dcn_module and bias_decay_mult is not None:
                        group["weight_decay"] = self.base_wd * wd_factor * bias_decay_mult
                    elif is_dwconv and dwconv_decay_mult is not None:
                        group["weight_decay"] = self.base_wd * wd_factor * dwconv_decay_mult
                    elif param.ndim == 1 and not is_dcn_module and flat_decay_mult is not None:
                        group["weight_decay"] = self.base_wd * wd_factor * flat_decay_mult
            params.append(group)
            if self.logger.isEnabledFor(logging.INFO):
                for key, value in group.items():
                    if key != "params":
                        self.logger.info(f"paramwise_options -- {full_name}:{key}={value}")

        child_is_dcn = is_dcn_module_fn(module)
        for child_name, child in module.named_children():
            child_prefix = f"{prefix}.{child_name}" if prefix else child_name
            self.add_params(params, child, prefix=child_prefix, is_dcn_module=child_is_dcn)

    # -- build --------------------------------------------------------------------------------
    def _optimizer_class(self):
        opt_type = self.optimizer_cfg.get("type")
        if opt_type is None:
            raise KeyError('optim_wrapper.optimizer must contain the key "type"')
        if isinstance(opt_type, str):
            cls = self.optimizers_registry.get(opt_type)
            if cls is None:
                reg = self.optimizers_registry
                msg = (reg._unknown_message(opt_type) if hasattr(reg, "_unknown_message")
                       else f"{opt_type} is not in the {reg.name} registry")
                raise UnknownTypeError(f"optim_wrapper.optimizer.type: {msg}")
            return cls
        if callable(opt_type):
            return opt_type
        raise TypeError(f"type must be a str or valid type, but got {type(opt_type)}")

    def __call__(self, model: nn.Module):
        if hasattr(model, "module"):
            model = model.module
        optim_wrapper_cfg = dict(self.optim_wrapper_cfg)
        optim_wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer_cfg = dict(self.optimizer_cfg)
        optimizer_cls = self._optimizer_class()
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        _optimizer_kwargs_check(optimizer_cls, optimizer_cfg, first_arg)
        if not self.paramwise_cfg:
            optimizer_cfg[first_arg] = model.parameters()
        else:
            params: list = []
            self.add_params(params, model)
            optimizer_cfg[first_arg] = params
        optimizer = self.optimizers_registry.build(optimizer_cfg)
        return self.wrappers_registry.build(optim_wrapper_cfg,
                                            default_args=dict(optimizer=optimizer))


is_dcn_module_fn = is_dcn_module

__all__ = ["DefaultOptimWrapperConstructor", "PARAMWISE_KEYS"]
