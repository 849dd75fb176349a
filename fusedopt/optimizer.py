"""FusedOptimizer: the class layer shared by FusedAdam, FusedAdamW and FusedSGD.

It validates, keeps torch-layout state (so state_dicts interchange with torch.optim), packs the
parameters into buckets (Note [pack once]) and keeps the hyper-parameter tables
(Note [lr lives on the device]). The math lives in fusedopt/functional.py and the backends.
"""
import torch
from torch.utils.weak import WeakIdKeyDictionary

from fusedopt import _distributed, _engine, backends

# param -> the FusedOptimizer that owns it; lets fusedopt.clip_grad_norm_ hand its coefficient
# to the step that follows instead of rescaling every grad (Note [clip inside the step]).
OWNERS = WeakIdKeyDictionary()


def host_number(value, sync=True):
    """A hyper-parameter as a Python number. A 1-element tensor is read with ``.item()``, which
    for a device tensor waits for the device: with ``sync=False`` such a value gives None."""
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item() if sync or value.device.type == "cpu" else None
    return value


# torch.optim's wording for a bad value, which users search for; the message adds the argument.
_TORCH_WORDING = {"lr": "learning rate", "eps": "epsilon value", "momentum": "momentum value",
                  "betas[0]": "beta parameter at index 0", "betas[1]": "beta parameter at index 1",
                  "weight_decay": "weight_decay value", "dampening": "dampening value"}


def check_hparam(name, value, low=0.0, high=None, sync=True):
    """Raise ValueError naming ``name`` unless low <= value (< high), in torch's words.

    ``sync=False`` (table rebuilds on the step path) leaves a device tensor's value unchecked:
    it was checked when it entered a group (constructor, add_param_group), with one host sync
    there as torch's own constructors have, and a step must never wait for the device."""
    if torch.is_tensor(value) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element; got {value.numel()} elements")
    what = f"Invalid {_TORCH_WORDING.get(name, name)}"
    v = host_number(value, sync)
    if v is None:
        return
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"{what}: {value!r}; expected {name} to be a number")
    if v < low or (high is not None and v >= high) or v != v:
        rng = f"[{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{what}: {value}; expected {name} in {rng}")


class FusedOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses define the algorithm: ``_check_group``, ``_row``, ``_flags``,
    ``_state_of``/``_new_state`` and ``_kernel`` (the functional entry)."""

    def __init__(self, params, defaults, backend="auto"):
        if defaults.get("differentiable"):
            raise NotImplementedError(f"{type(self).__name__} does not support differentiable=True")
        backends.check_backend(backend)
        if isinstance(params, torch.Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {torch.typename(params)}")
        if isinstance(params, (set, frozenset)):
            raise TypeError("params must be an ordered collection (list, tuple, generator); "
                            "the order of a set changes between runs")
        self._stale = [True]       # shared with every TrackedGroup of this optimizer
        self._buckets = None       # list[_engine.Bucket] or None: repack on next step
        self._tables = {}
        self._pending_clip = self._pending_norm = None
        self._dtensors = []
        self._skipped_steps = torch.zeros(())
        self._unchecked = False    # Note [range checks where values are used]
        # Optimizer.__init__ by name: FusedSGD/FusedAdam/FusedAdamW also derive from torch's
        # SGD/Adam/AdamW (isinstance), whose __init__ follows this class in their MRO
        torch.optim.Optimizer.__init__(self, params, dict(defaults, backend=backend))

    # GradScaler.step sets self.grad_scale / self.found_inf and lets step() unscale inline
    _step_supports_amp_scaling = True

    @property
    def backend(self):
        return self.defaults["backend"]

    # ---- groups and state -------------------------------------------------------------------
    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, (set, frozenset)):
            raise TypeError("param_group['params'] must be an ordered collection, not a set")
        candidate = dict(param_group)
        candidate["params"] = [params] if isinstance(params, torch.Tensor) else list(params or [])
        for i, p in enumerate(candidate["params"]):
            if isinstance(p, torch.Tensor) and (p.is_complex() or not p.is_floating_point()):
                raise TypeError(f"params[{i}] has dtype {p.dtype}; {type(self).__name__} supports "
                                "real floating point parameters (fp32, fp64, fp16, bf16)")
            if isinstance(p, torch.Tensor) and p.layout != torch.strided:
                raise TypeError(f"params[{i}] has layout {p.layout}; only dense (strided) "
                                "parameters are supported")
        for key, value in self.defaults.items():
            candidate.setdefault(key, value)
        self._check_group(candidate)       # before torch's add_param_group mutates anything
        group = _engine.TrackedGroup(self._stale, param_group, params=candidate["params"])
        super().add_param_group(group)
        self._invalidate()

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "_stale"):        # unpickling
            self._stale, self._buckets, self._tables, self._dtensors = [True], None, {}, []
            self._pending_clip = self._pending_norm = None
            self._skipped_steps = torch.zeros(())
            self._unchecked = False
        self.param_groups = [g if isinstance(g, _engine.TrackedGroup)
                             else _engine.TrackedGroup(self._stale, g) for g in self.param_groups]
        for g in self.param_groups:
            g._stale = self._stale
            for key, value in self.defaults.items():
                dict.setdefault(g, key, value)
        self._invalidate()

    def _invalidate(self):
        self._buckets = None
        self._stale[0] = True

    def zero_grad(self, set_to_none=True):
        self._pending_clip = self._pending_norm = None
        super().zero_grad(set_to_none)

    # ---- hyper-parameters -------------------------------------------------------------------
    @property
    def hparam_tables(self):
        """{device: float64 [num_groups, 5] table} (Note [lr lives on the device])."""
        self._sync_tables()
        return self._tables

    def set_hparam(self, name, values):
        """Write one hyper-parameter of every group: ``values`` has one entry per param group.

        A sequence of floats also updates the param_group dicts; a 1-D tensor is copied on device
        without a host sync (the dicts then keep their old floats). One copy per device either
        way, whatever the number of groups.
        """
        column, key, index = self._hparam_slot(name)
        n = len(self.param_groups)
        if len(values) != n:
            raise ValueError(f"set_hparam({name!r}): got {len(values)} values for {n} param groups")
        self._sync_tables()
        if not torch.is_tensor(values):
            values = [float(v) for v in values]
            for g, v in zip(self.param_groups, values):
                if index is None:
                    dict.__setitem__(g, key, v)
                else:
                    pair = list(g[key])
                    pair[index] = v
                    dict.__setitem__(g, key, tuple(pair))
        _engine.write_column(self._tables, column, values)

    def _hparam_slot(self, name):
        """(table column, param_group key, index in a tuple value or None) for ``name``."""
        slots = self._HPARAM_SLOTS
        if name not in slots:
            raise ValueError(f"unknown hyper-parameter {name!r} for {type(self).__name__}; "
                             f"expected one of {sorted(slots)}")
        return slots[name]

    def _sync_tables(self):
        """Rebuild the tables if a group was written (O(groups), only after a write)."""
        if not self._stale[0]:
            return
        flags = [self._flags(g) for g in self.param_groups]
        if self._buckets is not None and flags != self._packed_flags:
            self._buckets = None                 # an algorithm flag changed: repack
        for i, g in enumerate(self.param_groups):
            try:
                self._check_group(g, sync=False)
            except ValueError:                   # out of range: raised by the step that uses it
                self._unchecked = True
            except TypeError as e:               # not a number: no table can hold it
                raise TypeError(f"param_groups[{i}]: {e}") from None
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if any(d.type == "meta" for d in devices):   # no data to step (nor to pin and copy)
            i = [p.device.type for g in self.param_groups for p in g["params"]].index("meta")
            raise RuntimeError(f"{type(self).__name__}: params[{i}] is on the meta device, which "
                               "holds no data to step; materialize the model first (e.g. "
                               "module.to_empty(device=...) and initialise it)")
        self._tables = _engine.build_tables(self.param_groups, self._row, devices)
        self._packed_flags = flags
        self._stale[0] = False

    # ---- packing ------------------------------------------------------------------------------
    def _pack(self):
        """Note [pack once]: build the buckets from param_groups and state."""
        self._sync_tables()
        specs = {}
        self._dtensors = []                    # (DTensor param, its local shard)
        for gi, group in enumerate(self.param_groups):
            flags = self._packed_flags[gi]
            for p in group["params"]:
                placement = _distributed.placement_key(p)
                key = (p.device, p.dtype, flags, placement)
                spec = specs.get(key)
                if spec is None:
                    spec = specs[key] = _engine.BucketSpec(p.device, p.dtype, flags,
                                                           placement=placement,
                                                           groups=self.param_groups)
                shard = _distributed.local(p)
                if placement is not None:
                    self._dtensors.append((p, shard))
                packed = self._state_of(p, group)
                if packed is None:
                    spec.pending.append(shard)
                    spec.pending_group.append(gi)
                    spec.pending_source.append(p)
                else:
                    states, step = packed
                    spec.params.append(shard)
                    spec.steps.append(step)
                    spec.group_index.append(gi)
                    for k, state in enumerate(states):
                        if len(spec.states) <= k:
                            spec.states.append([])
                        spec.states[k].append(_distributed.local(state))
                OWNERS[p] = self
        buckets = []
        for spec in specs.values():
            backend = backends.resolve(self.backend, spec.device)
            buckets.append(_engine.Bucket(spec, backend, backend.make_bucket(spec), dict(spec.flags)))
        self._buckets = buckets
        # clip_grad_norm_'s test "are these exactly my params?" (Note [clip inside the step])
        self._param_ids = [id(p) for g in self.param_groups for p in g["params"]]
        return buckets

    def _current_buckets(self):
        buckets = self._buckets
        if buckets is None or self._stale[0]:
            self._sync_tables()
            buckets = self._buckets or self._pack()
        self._attach_shard_grads(buckets)
        return buckets

    def _attach_shard_grads(self, buckets, clear=False):
        """DTensor params: the kernels read grads from the local shards, so hand each shard its
        grad's local tensor (O(params) Python, on the distributed path only)."""
        for p, shard in self._dtensors:
            shard.grad = None if clear or p.grad is None else p.grad.to_local()

    def _init_new_states(self, buckets):
        """Create state for params that got their first grad. Returns True if any did."""
        grown = False
        for b in buckets:
            for i in b.backend.pending_with_grad(b.handle):
                p = b.spec.pending_source[i]
                self._check_grad(p)
                self._new_state(p, self.param_groups[b.spec.pending_group[i]])
                grown = True
        return grown

    def _master_states(self, p, group):
        """Note [master copy]: with ``master_weights=True`` every fp16/bf16 param keeps an fp32
        copy in ``state['master_param']``, made from the param with the rest of its state (or,
        after a load_state_dict without masters, such as torch's, at the next pack). Buckets carry the
        copies as their last state list: an fp32 list beside fp16/bf16 params (csrc/cuda/
        launchers.h, Note [slots]; ``BucketSpec.has_master``). A step reads the master in place
        of the param, computes in fp32 as always, and writes the master and its rounding into
        the param in the same pass, never reading the param: bf16 AdamW moves 20 B/param
        (reads g, m, v 2 B each and the master 4 B; writes p, m, v and the master) against
        14 B without, and keeps 4 B/param more. m and v keep the param's dtype (torch's layout).
        The master is the truth: a param written in place after its master exists (e.g. by
        ``model.load_state_dict``) is overwritten by the next step. Returns ``[master]`` or
        ``[]`` (fp32/fp64 params: a no-op; groups without the option drop a stale copy)."""
        # .get: groups of an optimizer pickled before the option existed lack the key
        if not (group.get("master_weights") and p.dtype in (torch.float16, torch.bfloat16)):
            if p in self.state:
                self.state[p].pop("master_param", None)
            return []
        state = self.state[p]
        if "master_param" not in state:
            state["master_param"] = p.detach().to(torch.float32, copy=True)
        return [state["master_param"]]

    def _check_grad(self, p):
        g = p.grad
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise RuntimeError(f"grad of {_engine.describe_param(self.param_groups, p)}: shape "
                               f"{tuple(g.shape)}, dtype {g.dtype} on {g.device} does not match the "
                               f"parameter's ({tuple(p.shape)}, {p.dtype}, {p.device})")

    # ---- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._fused_step()
        return loss

    def _check_groups_in_use(self):
        """Note [range checks where values are used]: a value written into a group after it was
        built (a scheduler, user code) is range-checked by the step that would use it, naming
        the group; a table rebuild for a scheduler's read only flags it. O(groups), and only
        after a write that failed a check."""
        for i, g in enumerate(self.param_groups):
            try:
                self._check_group(g, sync=False)
            except ValueError as e:
                raise ValueError(f"param_groups[{i}]: {e} (a value written into the group after "
                                 "the optimizer was built, e.g. by a scheduler)") from None
        self._unchecked = False

    def _fused_step(self):
        buckets = self._current_buckets()
        if self._unchecked:
            self._check_groups_in_use()
        if self._init_new_states(buckets):
            buckets = self._pack()
            self._attach_shard_grads(buckets)
        scalars = self._step_scalars(buckets)
        for b in buckets:
            if b.spec.params:
                self._kernel(b, self._tables[b.spec.device], **_on_device(scalars, b.spec.device))
        if self._dtensors:
            self._attach_shard_grads(buckets, clear=True)   # don't keep old grads alive

    def _step_scalars(self, buckets):
        """clip_coef / inv_scale / found_inf for this step (Note [clip inside the step])."""
        clip_coef, norm = self._pending_clip, self._pending_norm
        self._pending_clip = self._pending_norm = None
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        inv_scale = None
        if grad_scale is not None:
            # torch's unscale_ rounds 1/scale the same way: double reciprocal, then float
            inv_scale = grad_scale.double().reciprocal().float()
        if found_inf is not None:
            found_inf = found_inf.float()
        if self.defaults.get("skip_nonfinite"):
            # Note [skip non-finite steps]: one norm over every grad (reused from a clip of this
            # step) decides on device whether any grad is inf/nan; the kernels then touch nothing.
            if norm is None:
                norm = self._global_norm(buckets, 2.0)
            bad = (~torch.isfinite(norm)).float()
            found_inf = bad if found_inf is None else torch.maximum(found_inf, bad.to(found_inf))
            if self._skipped_steps.device != bad.device:   # once; pinned: no host sync
                self._skipped_steps = _engine.to_device(self._skipped_steps, bad.device)
            self._skipped_steps = self._skipped_steps + bad
        return {"clip_coef": clip_coef, "inv_scale": inv_scale, "found_inf": found_inf}

    @property
    def skipped_steps(self):
        """Steps skipped by ``skip_nonfinite=True`` (a 0-d tensor: reading it as a number syncs)."""
        return self._skipped_steps

    def state_dict(self):
        out = super().state_dict()
        if self.defaults.get("skip_nonfinite"):
            out["fusedopt"] = {"skipped_steps": self._skipped_steps.clone()}
        return out

    def load_state_dict(self, state_dict):
        extra = state_dict.get("fusedopt", {})
        # torch casts every state tensor to its param's dtype: keep the fp32 master copies
        # (Note [master copy]) out of that and give them back as float32 afterwards
        masters, state = {}, {}
        for k, s in state_dict["state"].items():
            if isinstance(s, dict) and "master_param" in s:
                masters[k] = s["master_param"]
                s = {name: v for name, v in s.items() if name != "master_param"}
            state[k] = s
        super().load_state_dict({**{k: v for k, v in state_dict.items() if k != "fusedopt"},
                                 "state": state})
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for k, p in zip(saved, params):
            if k in masters:
                self.state[p]["master_param"] = masters[k].to(device=p.device,
                                                              dtype=torch.float32)
        if "skipped_steps" in extra:
            self._skipped_steps = extra["skipped_steps"].clone()

    # ---- fused clipping -------------------------------------------------------------------------
    def clip_grad_norm_(self, max_norm, norm_type=2.0, error_if_nonfinite=False, *,
                        grad_scale=None):
        """Norm of every grad of this optimizer's params, as a 0-d tensor, with no host sync.

        Note [clip inside the step]: the coefficient min(1, max_norm / (norm + 1e-6)) is not
        applied to the grads here; the next step() multiplies each grad by it as it reads it,
        saving a read and a write of every grad (torch's clip_grad_norm_ + step: 40 B/param for
        fp32 AdamW; fused: 32). zero_grad() drops a pending coefficient.
        ``grad_scale``: the grads are still multiplied by this AMP loss scale (a 0-d tensor); the
        norm returned and clipped is that of the unscaled grads, and the step must then get the
        same scale as ``self.grad_scale`` (the GradScaler contract).
        """
        from fusedopt.clip import check_clip_args, clip_coefficient
        norm_type = check_clip_args(max_norm, norm_type)
        total = self.grad_norm(norm_type)
        if grad_scale is not None:
            # the same rounding of 1/scale as torch's unscale_ and as the step's inv_scale
            total = total * grad_scale.double().reciprocal().float().to(total.device)
        self._defer_clip(clip_coefficient(total, max_norm, norm_type, error_if_nonfinite), total)
        return total

    def grad_norm(self, norm_type=2.0):
        """Norm of every grad of this optimizer's params (across shards for DTensor params):
        a 0-d float32 tensor, one multi-tensor reduction per bucket, no host sync."""
        return self._global_norm(self._current_buckets(), float(norm_type))

    def _global_norm(self, buckets, norm_type):
        """Norm of every grad of this optimizer: one reduction per bucket, reduced across shards
        for DTensor buckets; other orders than 2 and inf go through torch's vector_norm."""
        norms = []
        for b in buckets:
            if backends.native_norm(norm_type):
                local = b.backend.bucket_norm(b.handle, norm_type)
            else:
                local = backends.tensors_norm(
                    [p.grad for p in b.spec.params + b.spec.pending if p.grad is not None], norm_type)
            norms.append(_distributed.reduce_norm(local, norm_type, b.spec.placement))
        return backends.combine_norms(norms, norm_type) if norms else torch.zeros(())

    def _defer_clip(self, coef, norm):
        if self._pending_clip is None:
            self._pending_clip, self._pending_norm = coef, norm
        else:   # clipped twice before a step: both coefficients apply, as with torch
            self._pending_clip = self._pending_clip * coef
            self._pending_norm = norm


def _on_device(scalars, device):
    return {k: (None if v is None else v.to(device, non_blocking=True)) for k, v in scalars.items()}
