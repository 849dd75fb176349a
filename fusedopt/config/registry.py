"""Registries: name -> class/function tables with mmengine's ``Registry`` semantics.

Standalone: nothing here imports mmengine (``fusedopt.mmengine`` mirrors these tables into
mmengine's registries). Default entries (torch.optim, fusedopt's optimizers, schedulers) are
filled lazily on first lookup, so importing this module never imports the rest of fusedopt
and cannot create an import cycle.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

__all__ = ["Registry", "build_from_cfg", "OPTIMIZERS", "OPTIM_WRAPPERS",
           "OPTIM_WRAPPER_CONSTRUCTORS", "PARAM_SCHEDULERS"]


def build_from_cfg(cfg: Mapping, registry: "Registry",
                   default_args: Optional[Mapping] = None) -> Any:
    """Build ``cfg['type'](**rest)`` looking the type up in ``registry`` (mmengine's rules:
    ``cfg`` wins over ``default_args``; ``type`` may be a name or a callable)."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"cfg should be a dict, ConfigDict or Config, but got {type(cfg)}")
    if "type" not in cfg and (default_args is None or "type" not in default_args):
        raise KeyError('`cfg` or `default_args` must contain the key "type", '
                       f"but got {cfg}\n{default_args}")
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a fusedopt Registry object, but got {type(registry)}")
    if default_args is not None and not isinstance(default_args, Mapping):
        raise TypeError("default_args should be a dict, ConfigDict, Config or None, "
                        f"but got {type(default_args)}")
    args = dict(cfg)
    if default_args is not None:
        for key, value in default_args.items():
            args.setdefault(key, value)
    args.pop("_scope_", None)
    obj_type = args.pop("type")
    if isinstance(obj_type, str):
        obj_cls = registry.get(obj_type)
        if obj_cls is None:
            raise KeyError(registry._unknown_message(obj_type))
    elif callable(obj_type):
        obj_cls = obj_type
    else:
        raise TypeError(f"type must be a str or valid type, but got {type(obj_type)}")
    return obj_cls(**args)


class Registry:
    """A name -> callable table.

    ``register_module()`` works as a decorator (``@R.register_module()``,
    ``@R.register_module(name='x', force=True)``) or as a call (``R.register_module(module=C)``).
    ``build(cfg)`` instantiates ``cfg['type']`` with the other keys. Names may carry the
    registry's scope as a prefix (``'fusedopt.FusedAdam'``). An unknown name raises ``KeyError``
    listing the closest registered names.
    """

    def __init__(self, name: str, build_func: Optional[Callable] = None,
                 scope: str = "fusedopt", populate: Sequence[Union[str, Callable]] = ()):
        self._name = name
        self._scope = scope
        self._module_dict: dict[str, Any] = {}
        self._build_func = build_func or build_from_cfg
        # module names to import / callables to run once before the first lookup
        self._populate = list(populate)
        self._populating = False

    # -- introspection -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def scope(self) -> str:
        return self._scope

    @property
    def module_dict(self) -> dict:
        self._ensure_populated()
        return self._module_dict

    def keys(self):
        return self.module_dict.keys()

    def __len__(self) -> int:
        return len(self.module_dict)

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __iter__(self):
        return iter(list(self.module_dict))

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._module_dict))
        return f"Registry(name={self._name!r}, scope={self._scope!r}, items=[{names}])"

    # -- lazy defaults --------------------------------------------------------------------
    def _ensure_populated(self) -> None:
        if not self._populate or self._populating:
            return
        self._populating = True
        try:
            while self._populate:
                item = self._populate[0]
                if isinstance(item, str):
                    try:
                        importlib.import_module(item)
                    except ModuleNotFoundError as e:  # optional provider not written/installed yet
                        if e.name is None or not item.startswith(e.name):
                            raise
                else:
                    item(self)
                self._populate.pop(0)
        finally:
            self._populating = False

    # -- lookup ---------------------------------------------------------------------------
    def _split(self, key: str) -> tuple[Optional[str], str]:
        scope, dot, rest = key.partition(".")
        if dot and scope == self._scope:
            return scope, rest
        return None, key

    def get(self, key: str) -> Optional[Any]:
        if not isinstance(key, str):
            raise TypeError(f"The key argument of `Registry.get` must be a str, got {type(key)}")
        self._ensure_populated()
        _, name = self._split(key)
        return self._module_dict.get(name)

    def _unknown_message(self, key: str) -> str:
        _, name = self._split(key)
        close = difflib.get_close_matches(name, list(self.module_dict), n=5, cutoff=0.5)
        if not close:  # case-insensitive second chance ('adamw' -> 'AdamW')
            lower = {k.lower(): k for k in self._module_dict}
            close = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), n=5,
                                                                   cutoff=0.5)]
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        return (f"{key} is not in the {self._scope}::{self._name} registry.{hint} "
                f"Check the spelling, or that the module registering `{key}` was imported.")

    def build(self, cfg: Mapping, *args, **kwargs) -> Any:
        return self._build_func(cfg, *args, **kwargs, registry=self)

    # -- registration ---------------------------------------------------------------------
    def _register_module(self, module: Any, module_name=None, force: bool = False) -> None:
        if not callable(module):
            raise TypeError(f"module must be Callable, but got {type(module)}")
        if module_name is None:
            module_name = module.__name__
        names = [module_name] if isinstance(module_name, str) else list(module_name)
        for name in names:
            if not force and name in self._module_dict and self._module_dict[name] is not module:
                existed = self._module_dict[name]
                raise KeyError(f"{name} is already registered in {self._name} "
                               f"at {getattr(existed, '__module__', existed)}")
            self._module_dict[name] = module

    def register_module(self, name: Optional[Union[str, Sequence[str]]] = None,
                        force: bool = False, module: Optional[Any] = None):
        if not isinstance(force, bool):
            raise TypeError(f"force must be a boolean, but got {type(force)}")
        if not (name is None or isinstance(name, str)
                or (isinstance(name, Sequence) and all(isinstance(n, str) for n in name))):
            raise TypeError("name must be None, an instance of str, or a sequence of str, "
                            f"but got {type(name)}")
        if module is not None:
            self._register_module(module, name, force)
            return module

        def _register(mod):
            self._register_module(mod, name, force)
            return mod

        return _register


def _build_with_registry(cfg, default_args=None, *, registry):
    return build_from_cfg(cfg, registry, default_args)


def _register_torch_optimizers(registry: Registry) -> None:
    import torch.optim
    for name in dir(torch.optim):
        if name.startswith("_"):
            continue
        obj = getattr(torch.optim, name)
        if (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
                and obj is not torch.optim.Optimizer and name not in registry._module_dict):
            registry._module_dict[name] = obj
    if "Adafactor" in registry._module_dict:     # mmengine's name for torch's Adafactor
        registry._module_dict.setdefault("TorchAdafactor", registry._module_dict["Adafactor"])


def _register_fusedopt_optimizers(registry: Registry) -> None:
    import fusedopt
    for name in ("FusedAdam", "FusedAdamW", "FusedSGD"):
        obj = getattr(fusedopt, name, None)
        if obj is not None and name not in registry._module_dict:
            registry._module_dict[name] = obj


OPTIMIZERS = Registry("optimizer", build_func=_build_with_registry,
                      populate=[_register_torch_optimizers, _register_fusedopt_optimizers])
OPTIM_WRAPPERS = Registry("optim_wrapper", build_func=_build_with_registry,
                          populate=["fusedopt.config.optim_wrapper"])
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor",
                                      build_func=_build_with_registry,
                                      populate=["fusedopt.config.constructor"])
PARAM_SCHEDULERS = Registry("parameter scheduler", build_func=_build_with_registry,
                            populate=["fusedopt.schedulers"])
