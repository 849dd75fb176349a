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
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

from fusedopt.config.errors import ConfigTypeError, ConfigValueError

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
    scope = args.pop("_scope_", None)
    obj_type = args.pop("type")
    if isinstance(obj_type, str):
        with registry.switch_scope_and_registry(scope) as registry:
            obj_cls = registry.get(obj_type)
        if obj_cls is None:
            raise KeyError(registry._unknown_message(obj_type))
    elif callable(obj_type):
        obj_cls = obj_type
    else:
        raise TypeError(f"type must be a str or valid type, but got {type(obj_type)}")
    return obj_cls(**args)


class Registry:
    """A name -> callable table, in a tree of registries (mmengine's ``Registry`` semantics).

    ``register_module()`` works as a decorator (``@R.register_module()``,
    ``@R.register_module(name='x', force=True)``) or as a call (``R.register_module(module=C)``).
    ``build(cfg)`` instantiates ``cfg['type']`` with the other keys. An unknown name raises
    ``KeyError`` listing the closest registered names.

    Scopes, for downstream packages: ``Registry(name, parent=OPTIMIZERS, scope='mypkg')`` is a
    child of fusedopt's registry. Its ``get('X')`` looks in the child, then in its ancestors;
    ``'mypkg.X'`` / ``'fusedopt.X'`` name the registry of that scope (the root or one of the
    root's children); ``build`` honours a cfg's ``_scope_`` (the registry of that scope in the
    tree builds it). ``scope`` defaults to the top-level package of the module that creates the
    registry; ``build_func`` to the parent's. ``locations``: modules imported before the first
    lookup (mmengine's lazy registration).
    """

    def __init__(self, name: str, build_func: Optional[Callable] = None,
                 parent: Optional["Registry"] = None, scope: Optional[str] = None,
                 locations: Sequence[str] = (), *, populate: Sequence[Union[str, Callable]] = (),
                 lazy: Optional[Mapping[str, str]] = None):
        self._name = name
        self._module_dict: dict[str, Any] = {}
        self._children: dict[str, Registry] = {}
        if scope is None:
            scope = _infer_scope()
        elif not isinstance(scope, str):
            raise ConfigTypeError(f"scope must be a str, but got {type(scope)}")
        self._scope = scope
        if parent is not None and not isinstance(parent, Registry):
            raise ConfigTypeError("parent must be a fusedopt Registry (mmengine's registries have "
                                  f"their own tree: see fusedopt.mmengine), but got {type(parent)}")
        self.parent = parent
        if parent is not None:
            parent._add_child(self)
        if build_func is None:
            build_func = parent.build_func if parent is not None else _build_with_registry
        self.build_func = build_func
        # module names to import / callables to run once before the first lookup
        self._populate = [*locations, *populate]
        self._populating = False
        # Note [lazy registry entries]: name -> module that registers it, imported when the name
        # is looked up (or the whole table is listed). ZeroRedundancyOptimizer's module imports
        # torch.distributed.optim: 0.78 s (python -X importtime, this machine), which the first
        # build of every other optimizer should not pay.
        self._lazy = dict(lazy or {})

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
        while self._lazy:
            self._import_lazy(next(iter(self._lazy)))
        return self._module_dict

    def _import_lazy(self, name: str) -> None:
        importlib.import_module(self._lazy.pop(name))

    @property
    def children(self) -> dict:
        return self._children

    @property
    def root(self) -> "Registry":
        node = self
        while node.parent is not None:
            node = node.parent
        return node

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

    # -- the tree -------------------------------------------------------------------------
    def _add_child(self, registry: "Registry") -> None:
        if registry.scope in self._children:
            raise ConfigValueError(f"scope {registry.scope} exists in {self.name} registry")
        self._children[registry.scope] = registry

    def _search_child(self, scope: str) -> Optional["Registry"]:
        """The registry of ``scope`` in this subtree (depth first), or None."""
        if self._scope == scope:
            return self
        for child in self._children.values():
            found = child._search_child(scope)
            if found is not None:
                return found
        return None

    @contextmanager
    def switch_scope_and_registry(self, scope: Optional[str]):
        """The registry of ``scope`` in this registry's tree (this one if ``scope`` is None or
        has no registry here)."""
        found = None if scope is None else self.root._search_child(scope)
        yield self if found is None else found

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
    @staticmethod
    def split_scope_key(key: str) -> tuple[Optional[str], str]:
        """``'mypkg.X'`` -> ``('mypkg', 'X')``; ``'X'`` -> ``(None, 'X')``."""
        scope, dot, rest = key.partition(".")
        return (scope, rest) if dot else (None, key)

    def get(self, key: str) -> Optional[Any]:
        """The object registered as ``key``, or None (mmengine's lookup order, see the class)."""
        if not isinstance(key, str):
            raise TypeError(f"The key argument of `Registry.get` must be a str, got {type(key)}")
        scope, name = self.split_scope_key(key)
        if scope is None or scope == self._scope:
            node = self
            while node is not None:
                node._ensure_populated()
                if name not in node._module_dict and name in node._lazy:
                    node._import_lazy(name)
                found = node._module_dict.get(name)
                if found is not None or scope is not None:
                    return found
                node = node.parent
            return None
        if scope in self._children:
            return self._children[scope].get(name)
        root = self.root
        if scope == root._scope or scope in root._children:
            return root.get(key)
        return None

    def _visible_names(self, key: str) -> list:
        """Names a lookup of ``key`` could have found (for "did you mean")."""
        scope, _ = self.split_scope_key(key)
        if scope is not None and scope != self._scope:
            node = self._children.get(scope) or self.root._search_child(scope)
            return list(node.module_dict) if node is not None else []
        names, node = [], self
        while node is not None:
            names += [n for n in node.module_dict if n not in names]
            node = node.parent if scope is None else None
        return names

    def _unknown_message(self, key: str) -> str:
        return unknown_name_message(key, self.split_scope_key(key)[1], self._visible_names(key),
                                    f"{self._scope}::{self._name}")

    def build(self, cfg: Mapping, *args, **kwargs) -> Any:
        return self.build_func(cfg, *args, **kwargs, registry=self)

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


def unknown_name_message(key: str, name: str, names, where: str) -> str:
    """"``key`` is not in the ``where`` registry. Did you mean: ...?" over ``names``."""
    names = list(names)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # case-insensitive second chance ('adamw' -> 'AdamW')
        lower = {k.lower(): k for k in names}
        close = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), n=5,
                                                               cutoff=0.5)]
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"{key} is not in the {where} registry.{hint} "
            f"Check the spelling, or that the module registering `{key}` was imported.")


def _infer_scope() -> str:
    """The top-level package of the module that called ``Registry(...)`` (mmengine's rule)."""
    frame = sys._getframe(2)
    module = inspect.getmodule(frame)
    name = module.__name__ if module is not None else frame.f_globals.get("__name__")
    return (name or "fusedopt").split(".")[0]


def _build_with_registry(cfg, default_args=None, *, registry):
    return build_from_cfg(cfg, registry, default_args)


def torch_optimizer_names() -> list:
    """mmengine's ``TORCH_OPTIMIZERS``: the names of the classes in ``torch.optim`` that derive
    from ``torch.optim.Optimizer`` (the base class included)."""
    import torch.optim
    return [name for name in dir(torch.optim) if not name.startswith("__")
            and inspect.isclass(getattr(torch.optim, name))
            and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)]


def _register_torch_optimizers(registry: Registry) -> None:
    import torch.optim
    for name in torch_optimizer_names():
        registry._module_dict.setdefault(name, getattr(torch.optim, name))
    if "Adafactor" in registry._module_dict:     # mmengine's name for torch's Adafactor
        registry._module_dict.setdefault("TorchAdafactor", registry._module_dict["Adafactor"])


# mmpretrain's names for the optimizers it defines (its configs say type='LARS', 'Lamb'); torch
# has neither, so a config written for mmpretrain builds fusedopt's drop-in unchanged
MMPRETRAIN_NAMES = {"LARS": "FusedLARS", "Lamb": "FusedLAMB"}


def _register_fusedopt_optimizers(registry: Registry) -> None:
    from fusedopt.algorithms import optimizer_classes
    classes = optimizer_classes()
    for name, cls in classes.items():
        registry._module_dict.setdefault(name, cls)
    for name, target in MMPRETRAIN_NAMES.items():
        registry._module_dict.setdefault(name, classes[target])


OPTIMIZERS = Registry("optimizer", build_func=_build_with_registry,
                      populate=[_register_torch_optimizers, _register_fusedopt_optimizers],
                      lazy={"ZeroRedundancyOptimizer": "fusedopt.config.zero_optimizer"})
OPTIM_WRAPPERS = Registry("optim_wrapper", build_func=_build_with_registry,
                          populate=["fusedopt.config.optim_wrapper"])
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor",
                                      build_func=_build_with_registry,
                                      populate=["fusedopt.config.constructor"])
PARAM_SCHEDULERS = Registry("parameter scheduler", build_func=_build_with_registry,
                            populate=["fusedopt.schedulers"])
