"""FusedOptimizer: the one class layer of every fusedopt optimizer.

It validates, keeps torch-layout state (so state_dicts interchange with torch.optim), packs the
parameters into buckets (Note [pack once]) and keeps the hyper-parameter tables in step with the
param_group dicts (Note [one truth], fusedopt/_hparams.py). What differs between algorithms is
data: the class's ``ALGORITHM`` descriptor (Note [algorithm as data], fusedopt/algorithms/);
the math lives in the backends, reached through fusedopt/_ops.py.
"""
import warnings

import torch
from torch.optim.optimizer import required

from fusedopt import _distributed, _engine, _hparams, _ops, _precision, backends, clip


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
    """Base class. A subclass names its algorithm (``ALGORITHM``, a fusedopt.algorithms
    descriptor), its constructor's arguments and defaults, and checks that span several values
    (``_check_pairs``, ``_check_column``); the table columns, flags, state and step follow from
    the descriptor."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        algo = cls.__dict__.get("ALGORITHM")
        if algo is not None:      # what the tables and schedulers read, from the descriptor
            cls._COLUMNS = algo.table_columns
            cls._FLAG_KEYS = algo.flag_keys + ("master_weights", "kahan_sum", "state_dtype")
            cls._HPARAM_SLOTS = algo.slots

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
        self._init_engine()
        # Optimizer.__init__ by name: FusedSGD/FusedAdam/FusedAdamW also derive from torch's
        # SGD/Adam/AdamW (isinstance), whose __init__ follows this class in their MRO
        torch.optim.Optimizer.__init__(self, params, dict(defaults, backend=backend))

    def _init_engine(self):
        """What torch's Optimizer does not keep (and pickling leaves out)."""
        self._hparams = _hparams.HparamTable(self._COLUMNS, self._FLAG_KEYS)
        self._param_set = set()    # every param of every group (Note [linear construction])
        self._buckets = None       # list[_engine.Bucket] or None: repack on next step
        self._packed = None        # (group dicts, their flags) the buckets were packed from
        self._param_ids = []
        self._carry = _Carry()
        self._dtensors = []
        self._counters = {}        # param -> internal step counter (Note [internal counters])

    # GradScaler.step sets self.grad_scale / self.found_inf and lets step() unscale inline
    _step_supports_amp_scaling = True

    @property
    def backend(self):
        return self.defaults["backend"]

    # ---- groups and state -------------------------------------------------------------------
    def add_param_group(self, param_group):
        """torch's add_param_group: the same checks and messages, and the group is a plain dict
        (a copy of ``param_group``). Note [linear construction]: torch checks a new group
        against a set rebuilt from every earlier group, so building an optimizer of G one-tensor
        groups costs O(G^2) (10,000 groups: 13 s on the 2-core VM, fusedopt 0.07 s,
        bench/hparams.py); the set of params seen so far is kept here instead, O(params) in
        all."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, (set, frozenset)):
            raise TypeError("param_group['params'] must be an ordered collection, not a set")
        params = [params] if isinstance(params, torch.Tensor) else list(params or [])
        group = dict(param_group)
        if any(isinstance(p, tuple) for p in params):          # torch's named parameters
            if not all(isinstance(p, tuple) for p in params):
                raise ValueError("all optimizer params should be with/without names. Some param "
                                 "names are missing")
            group["param_names"] = [p[0] for p in params]
            params = [p[1] for p in params]
        group["params"] = params
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is "
                                + torch.typename(p))
            if not (p.is_leaf or p.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if p.is_complex() or not p.is_floating_point():
                raise TypeError(f"params[{i}] has dtype {p.dtype}; {type(self).__name__} supports "
                                "real floating point parameters (fp32, fp64, fp16, bf16)")
            if p.layout != torch.strided:
                raise TypeError(f"params[{i}] has layout {p.layout}; only dense (strided) "
                                "parameters are supported")
        for key, value in self.defaults.items():
            if value is required and key not in group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {key}")
            group.setdefault(key, value)
        self._check_group(group)       # before anything is changed
        new = set(params)
        if len(new) != len(params):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in "
                          "future, this will cause an error; see "
                          "github.com/pytorch/pytorch/issues/40967 for more information",
                          stacklevel=3)
        if self.param_groups and ("param_names" in group) != ("param_names" in
                                                              self.param_groups[0]):
            raise ValueError("all optimizer param groups should be with/without names. cannot "
                             "add param group "
                             f"{'with' if 'param_names' in group else 'without'} names to the "
                             "optimizer")
        if not self._param_set.isdisjoint(new):
            raise ValueError("some parameters appear in more than one parameter group")
        self._param_set |= new
        self.param_groups.append(group)
        self._hparams.stale = True
        self._buckets = None

    def __setstate__(self, state):
        # torch's load_state_dict ends here too, with new group dicts
        super().__setstate__(state)
        if not hasattr(self, "_hparams"):        # unpickling
            self._init_engine()
        self.param_groups = [g if type(g) is dict else dict(g) for g in self.param_groups]
        for g in self.param_groups:
            for key, value in self.defaults.items():
                g.setdefault(key, value)
        self._param_set = {p for g in self.param_groups for p in g["params"]}
        self._counters = {}        # rebuilt from the loaded state (Note [internal counters])
        self._hparams.stale = True
        self._buckets = None

    def zero_grad(self, set_to_none=True):
        """torch's zero_grad (its own is closed to torch.compile, which would break the graph
        there), dropping a pending clip coefficient (Note [clip inside the step])."""
        self._carry.clip = self._carry.norm = None
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                g.zero_()

    # ---- hyper-parameters (Note [one truth], fusedopt/_hparams.py) ----------------------------
    @property
    def hparam_tables(self):
        """{device: float64 [num_groups, NUM_COLS] table} (Note [lr lives on the device]), following
        the param_group dicts as the next step will see them."""
        self._sync_hparams()
        return self._hparams.tables

    def set_hparam(self, name, values):
        """Write one hyper-parameter of every group: ``values`` has one entry per param group.

        Numbers are checked, then written into the param_group dicts and the tables at once:
        one copy per device, whatever the number of groups. A tensor (graph mode:
        ``DeviceSchedule``) is copied into the tables on its device, without a host sync or a
        check; the dicts keep their values until they are written again
        (``DeviceSchedule.sync_to_host``).
        """
        groups = self.param_groups
        if len(values) != len(groups):
            raise ValueError(f"set_hparam({name!r}): got {len(values)} values for "
                             f"{len(groups)} param groups")
        if torch.is_tensor(values):
            column = self._hparam_slot(name)[0]
            self._sync_hparams()
            self._hparams.write_device_column(column, values)
        else:
            self._write_hparam(name, torch.tensor([float(v) for v in values],
                                                  dtype=torch.float64), check=True)

    def _write_hparam(self, name, values, check=False):
        """Numbers given as a CPU float64 tensor into the dicts and the tables at once.

        ``check`` (set_hparam): an invalid value raises before anything is written. Without it
        (fusedopt's schedulers, which write whatever mmengine's would): a column with a value
        out of range goes into the dicts only, and the step that would use it raises, naming
        the group and the key (Note [range checks where values are used])."""
        column, key, index = self._hparam_slot(name)
        groups = self.param_groups
        if len(values) != len(groups):
            raise ValueError(f"set_hparam({name!r}): got {len(values)} values for "
                             f"{len(groups)} param groups")
        table = self._hparams
        if table.stale or len(groups) != table.rows:
            self._sync_hparams()       # rows first; writes elsewhere wait for the next step
        values = values.contiguous()
        if check:
            self._check_column(column, values)
        code = self._hparams.write_column(groups, column, values)
        if code >= 0 and check:
            c = self._COLUMNS[column]
            rng = f"[{c.low}, {c.high}{')' if c.high_open else ']'}"
            where = f"[{key!r}]" + ("" if index is None else f"[{index}]")
            raise ValueError(f"set_hparam({name!r}): invalid value {values[code].item()!r} for "
                             f"param_groups[{code}]{where}; expected a number in {rng}")
        if code >= 0:                            # the next step's scan finds and names it
            _hparams.write_column(groups, key, index, values)
        elif code == -2:                         # an algorithm flag switched (SGD's momentum)
            self._buckets = None

    def _check_column(self, column, values):
        """Constraints across columns that set_hparam checks before ``values`` are written
        (SGD's nesterov)."""

    def _hparam_slot(self, name):
        """(table column, param_group key, index in a tuple value or None) for ``name``."""
        slots = self._HPARAM_SLOTS
        if name not in slots:
            raise ValueError(f"unknown hyper-parameter {name!r} for {type(self).__name__}; "
                             f"expected one of {sorted(slots)}")
        return slots[name]

    @classmethod
    def _row(cls, group):
        """The table row of a group: numbers or tensors, NUM_COLS of them."""
        row = [0.0] * _hparams.NUM_COLS
        for column, c in cls._COLUMNS.items():
            value = group[c.key]
            value = value if c.index is None else value[c.index]
            row[column] = float(value) if c.boolean else value
        return row

    @classmethod
    def _check_group(cls, group, sync=True):
        """Every table column of ``group`` in its range (``sync=False``: a device tensor is not
        read; it was checked when it entered the group)."""
        cls._check_pairs(group)
        _precision.check_group(group)
        for c in cls._COLUMNS.values():
            value = group[c.key] if c.index is None else group[c.key][c.index]
            if c.boolean:
                if value not in (True, False):   # 0 and 1 too, as Python's bools are
                    raise TypeError(f"Invalid {c.key}: {value!r}; expected True or False")
                continue
            check_hparam(c.key if c.index is None else f"{c.key}[{c.index}]", value, c.low,
                         c.high if c.high_open else None, sync=sync)

    @staticmethod
    def _check_pairs(group):
        """Values that hold several columns have the right shape (Adam's betas)."""

    def _check_row(self, row, group):
        """_check_group, with the group named in the error."""
        try:
            self._check_group(group, sync=False)
        except KeyError as exc:
            raise KeyError(f"param_groups[{row}] has no {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"param_groups[{row}]: {exc}") from None

    def _sync_hparams(self):
        """Note [one truth]: bring the tables to the param_group dicts. O(1) Python calls per
        step; a written group costs O(1) more (Python only for rows with a flag, a tensor or an
        invalid value written)."""
        table, groups = self._hparams, self.param_groups
        if table.stale or len(groups) != table.rows:
            for row, group in enumerate(groups):
                self._check_row(row, group)
            devices = {p.device for g in groups for p in g["params"]}
            if any(d.type == "meta" for d in devices):   # no data to step (nor to pin and copy)
                i = [p.device.type for g in groups for p in g["params"]].index("meta")
                raise RuntimeError(f"{type(self).__name__}: params[{i}] is on the meta device, "
                                   "which holds no data to step; materialize the model first "
                                   "(e.g. module.to_empty(device=...) and initialise it)")
            table.rebuild(groups, [self._row(g) for g in groups], devices)
            self._buckets = None
        else:
            rows = table.scan(groups)
            if rows:
                self._rewrite_rows(groups, rows)
        table.copy_tensors()

    def _rewrite_rows(self, groups, rows):
        for row in rows:
            self._check_row(row, groups[row])
        self._hparams.rewrite_rows(groups, rows, [self._row(groups[r]) for r in rows])
        if self._packed is not None:
            packed_groups, packed_flags = self._packed
            if any(groups[r] is not packed_groups[r] or self._flags(groups[r]) != packed_flags[r]
                   for r in rows):
                self._buckets = None             # a flag changed, or a group was replaced

    # ---- packing ------------------------------------------------------------------------------
    def _pack(self):
        """Note [pack once]: build the buckets from param_groups and state (after the tables:
        ``_sync_hparams``)."""
        if self._hparams.captured:
            self._hparams.captured = False
            raise RuntimeError(
                f"{type(self).__name__} must regroup its parameters (a param group was added, an "
                "algorithm flag changed, or a parameter got its first grad), but a step of it was "
                "captured in a CUDA graph, which keeps stepping the old grouping. Capture the "
                "graph again after the change (the next step regroups); Note [one truth]")
        groups = self.param_groups
        flags = [self._flags(g) for g in groups]
        modes = self._modes(groups)            # before any state changes (it raises)
        specs = {}
        self._dtensors = []                    # (DTensor param, its local shard)
        position = -1                          # of p in the groups, in order (its seed)
        for gi, group in enumerate(groups):
            for p in group["params"]:
                position += 1
                placement = _distributed.placement_key(p)
                mode = modes[gi, p.dtype]
                key = (p.device, p.dtype, flags[gi][0], mode, placement)
                spec = specs.get(key)
                if spec is None:
                    spec = specs[key] = _engine.BucketSpec(p.device, p.dtype, flags[gi][0],
                                                           placement=placement, groups=groups,
                                                           weights=mode[0])
                shard = _distributed.local(p)
                if placement is not None:
                    self._dtensors.append((p, shard))
                packed = self._state_of(p, group, mode, position)
                if packed is None:
                    spec.pending.append(shard)
                    spec.pending_group.append(gi)
                    spec.pending_source.append(p)
                else:
                    states, step = packed
                    spec.params.append(shard)
                    spec.steps.append(step)
                    spec.group_index.append(gi)
                    if mode[2]:
                        spec.seeds.append(self.state[p]["rounding_seed"])
                    for k, state in enumerate(states):
                        if len(spec.states) <= k:
                            spec.states.append([])
                        spec.states[k].append(_distributed.local(state))
        buckets = []
        for spec in specs.values():
            backend = backends.resolve(self.backend, spec.device)
            buckets.append(_engine.Bucket(spec, backend, backend.make_bucket(spec),
                                          self.ALGORITHM, spec.flags,
                                          self._hparams.tables[spec.device]))
        self._buckets = buckets
        self._packed = (list(groups), flags)
        # clip_grad_norm_'s test "are these exactly my params?" (Note [clip inside the step])
        params = [p for g in groups for p in g["params"]]
        self._param_ids = [id(p) for p in params]
        clip.register_owner(self, params)
        return buckets

    def _current_buckets(self):
        self._sync_hparams()
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
                group = self.param_groups[b.spec.pending_group[i]]
                self._new_state(p, group, self._mode(group, p.dtype))
                grown = True
        return grown

    # ---- state (torch's layout: state_dicts interchange with torch.optim) -------------------------
    @classmethod
    def _flags(cls, group):
        """(the algorithm's flags word, the precision options): what buckets are keyed by,
        besides the device, the dtype and the mode (Note [precision modes])."""
        algo = cls.ALGORITHM
        return algo.flags_word(algo.group_flags(group)), _precision.group_key(group)

    def _modes(self, groups):
        """{(group index, param dtype): (weights, state dtype, stochastic)}; a ValueError names
        the group whose state_dtype its params cannot take."""
        modes = {}
        for gi, group in enumerate(groups):
            for dtype in {p.dtype for p in group["params"]}:
                try:
                    modes[gi, dtype] = self._mode(group, dtype)
                except ValueError as exc:
                    raise ValueError(f"param_groups[{gi}]: {exc}") from None
        return modes

    def _mode(self, group, dtype):
        weights, states, stochastic = _precision.mode(group, dtype)
        # no state lists (SGD without momentum): nothing to round, no seed to keep
        return weights, states, stochastic and bool(self.ALGORITHM.state_names(
            self._flags(group)[0]))

    def _state_of(self, p, group, mode, position):
        """(state tensors in bucket order, step counter) of a param that has state, else None.
        States are brought to the mode's dtype here (after a load_state_dict, or when a group's
        options changed), and its weights mode's list and seed (from ``position``, the param's
        place in the groups) are made or dropped."""
        algo = self.ALGORITHM
        weights, dtype, stochastic = mode
        names = algo.state_names(self._flags(group)[0])
        state = self.state.get(p) or {}
        if any(state.get(name) is None for name in names):
            return None
        for name in names:
            if state[name].dtype != dtype:      # round-to-nearest: the same bits on every run
                state[name] = state[name].to(dtype)
        if stochastic and "rounding_seed" not in state:
            state["rounding_seed"] = _precision.seed_of(position)
        elif not stochastic:
            state.pop("rounding_seed", None)
        if algo.step_in_state:
            if "step" not in state:
                return None
            step = self._device_step(p, state)
        else:
            step = self._counter(p, seeded=True) if names else self._counters.get(p)
            if step is None:
                return None
            if not stochastic:
                state.pop("step", None)
            elif "step" not in state:
                state["step"] = step
            elif state["step"] is not step:     # loaded: the saved counter goes on
                step = self._counters[p] = self._device_step(p, state)
        return [state[name] for name in names] + self._weights_states(p, weights), step

    @staticmethod
    def _device_step(p, state):
        """state['step'] as the 0-d float32 tensor beside the param that the kernels count in.
        torch keeps 'step' on the CPU unless fused/capturable; fusedopt keeps it beside the
        parameter (what torch's fused path does), so the bias correction is computed on the
        device."""
        step = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device).reshape(())
        state["step"] = step
        return step

    def _new_state(self, p, group, mode):
        """The state of a param at its first grad: zeros shaped like it in the mode's state
        dtype and a counter at 0 (the next pack gives it a seed where its states round
        stochastically)."""
        algo = self.ALGORITHM
        state = self.state[p]
        if algo.step_in_state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        else:
            # a fresh counter: one kept from momentum-free steps would mark a new buffer seeded
            self._counters.pop(p, None)
            counter = self._counter(p, seeded=False)
            if mode[2]:
                # Note [stochastic rounding]: the bits follow the counter, so a resumed run
                # needs it: kept in the state, where torch's layout has no 'step'
                state["step"] = counter
        for name in algo.state_names(self._flags(group)[0]):
            state[name] = torch.zeros_like(p, dtype=mode[1], memory_format=torch.preserve_format)

    def _counter(self, p, seeded):
        """Note [internal counters]: an algorithm whose torch layout has no 'step' (SGD, LARS,
        Lion) still needs a per-param count: torch's SGD seeds a momentum buffer with the first
        grad (no dampening), so the kernels must know which buffers are seeded. It lives here,
        outside torch's state layout, and is rebuilt from the state after a load (a param with
        a buffer is seeded), unless the state keeps it (stochastically rounded states)."""
        counter = self._counters.get(p)
        if counter is None:
            counter = torch.full((), float(seeded), dtype=torch.float32, device=p.device)
            self._counters[p] = counter
        return counter

    def _weights_states(self, p, weights):
        """The weights mode's last state list entry of ``p`` (Note [precision modes]): ``[master]``,
        ``[compensation]`` or ``[]``; the other mode's entry is dropped.

        Note [master copy]: with ``master_weights=True`` every fp16/bf16 param keeps an fp32
        copy in ``state['master_param']``, made from the param with the rest of its state (or,
        after a load_state_dict without masters, such as torch's, at the next pack). Buckets carry the
        copies as their last state list: an fp32 list beside fp16/bf16 params (csrc/cuda/
        launchers.h, Note [slots]; ``BucketSpec.has_master``). A step reads the master in place
        of the param, computes in fp32 as always, and writes the master and its rounding into
        the param in the same pass, never reading the param: bf16 AdamW moves 28 B/param
        (reads g 2 B, the master and the fp32 m, v 4 B each; writes p, m, v and the master)
        against 14 B without, and keeps 12 B/param more (issue 25: fp32 states are what make
        the run track fp32). The master is the truth: a param written in place after its
        master exists (e.g. by ``model.load_state_dict``) is overwritten by the next step.

        ``kahan_sum=True`` keeps ``state['compensation']`` instead (the param's dtype): what the
        param's rounding lost, added back at the next step."""
        state = self.state[p]
        keep = {_engine.MASTER: "master_param", _engine.KAHAN: "compensation"}.get(weights)
        for name in ("master_param", "compensation"):
            if name != keep:
                state.pop(name, None)
        if keep is None:
            return []
        if keep not in state:
            state[keep] = (p.detach().to(torch.float32, copy=True) if weights == _engine.MASTER
                           else torch.zeros_like(p, memory_format=torch.preserve_format))
        elif state[keep].dtype != (torch.float32 if weights == _engine.MASTER else p.dtype):
            state[keep] = state[keep].to(torch.float32 if weights == _engine.MASTER else p.dtype)
        return [state[keep]]

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
        if torch.compiler.is_compiling():
            self._compiled_step()
        else:
            self._fused_step()
        return loss

    def _fused_step(self):
        buckets = self._current_buckets()
        if self._init_new_states(buckets):
            buckets = self._pack()
            self._attach_shard_grads(buckets)
        scalars = self._step_scalars(buckets)
        if self._hparams.has_cuda and torch.cuda.is_current_stream_capturing():
            self._hparams.captured = True        # Note [one truth]: these tables are in a graph
        for b in buckets:
            if b.spec.params:
                _ops.step(b, _on_device(scalars, b.spec.device))
        if self._dtensors:
            self._attach_shard_grads(buckets, clear=True)   # don't keep old grads alive

    # Note [compiled steps] (fusedopt/_ops.py): under torch.compile, everything before the
    # kernels that is not tensor math runs in _init_group, outside the graph; the graph writes the
    # table from the param_group dicts and calls the ops.
    def _init_group(self):
        """Table rows, packing and new states for the next step. Dynamo runs this for real while
        it traces a step (its hook for torch.optim's _init_group) and keeps None as a constant."""
        from fusedopt import _library  # noqa: F401  (registers the ops before the graph calls them)
        buckets = self._current_buckets()
        if self._init_new_states(buckets):
            buckets = self._pack()
        # tensors the graph writes in place at a fixed address (the state dict's are marked by
        # Dynamo): a CUDA graph of the step (mode="reduce-overhead") then copies none of them
        for b in buckets:
            for t in (b.hp, *b.spec.steps):
                torch._dynamo.mark_static_address(t)

    def _compiled_step(self):
        self._init_group()
        self._hparams_in_graph()
        buckets = self._buckets
        scalars = self._step_scalars(buckets)
        for b in buckets:
            if b.spec.params:
                _ops.step(b, _on_device(scalars, b.spec.device))

    def _hparams_in_graph(self):
        """Every table cell from the param_group dicts, inside the graph: a number is a constant
        until it changes, then a graph input (Dynamo recompiles once), a tensor is read on the
        device, as torch.optim reads its groups at every step."""
        for device, table in self._hparams.tables.items():
            zero = torch.zeros((), dtype=torch.float64, device=device)
            cells = [v.to(device=device, dtype=torch.float64).reshape(()) if torch.is_tensor(v)
                     else zero + v for g in self.param_groups for v in self._row(g)]
            table.copy_(torch.stack(cells).view(table.shape))

    def _step_scalars(self, buckets):
        """clip_coef / inv_scale / found_inf for this step (Note [clip inside the step])."""
        carry = self._carry
        clip_coef, norm = carry.clip, carry.norm
        carry.clip = carry.norm = None
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        inv_scale = None
        if grad_scale is not None:
            # torch's unscale_ rounds 1/scale the same way: double reciprocal, then float
            inv_scale = grad_scale.double().reciprocal().float()
        if found_inf is not None:
            found_inf = found_inf.float()
        clip_coef = self._grad_coefficient(buckets, clip_coef, inv_scale)
        if self.defaults.get("skip_nonfinite"):
            # Note [skip non-finite steps]: one norm over every grad (reused from a clip of this
            # step) decides on device whether any grad is inf/nan; the kernels then touch nothing.
            if norm is None:
                norm = self._global_norm(buckets, 2.0)
            bad = (~torch.isfinite(norm)).float()
            found_inf = bad if found_inf is None else torch.maximum(found_inf, bad.to(found_inf))
            if carry.skipped.device != bad.device:   # once; pinned: no host sync
                carry.skipped = _engine.upload(carry.skipped, bad.device)
            carry.skipped = carry.skipped + bad
        return {"clip_coef": clip_coef, "inv_scale": inv_scale, "found_inf": found_inf}

    def _grad_coefficient(self, buckets, clip_coef, inv_scale):
        """The factor every grad of this step is multiplied by besides the AMP unscale: the
        deferred clip coefficient, or None. An algorithm with a clip of its own (LAMB's
        ``max_grad_norm``) folds it in here."""
        return clip_coef

    @property
    def skipped_steps(self):
        """Steps skipped by ``skip_nonfinite=True`` (a 0-d tensor: reading it as a number syncs)."""
        return self._carry.skipped

    def state_dict(self):
        out = super().state_dict()
        if self.defaults.get("skip_nonfinite"):
            out["fusedopt"] = {"skipped_steps": self._carry.skipped.clone()}
        return out

    def load_state_dict(self, state_dict):
        extra = state_dict.get("fusedopt", {})
        # torch casts every state tensor to its param's dtype: keep the tensors out of that (fp32
        # masters and states, bf16 states; Note [precision modes]) and give them back in their
        # own dtype; the next pack converts what the group's mode wants otherwise
        kept, state = {}, {}
        for k, s in state_dict["state"].items():
            if isinstance(s, dict):
                kept[k] = {name: v for name, v in s.items()
                           if name != "step" and torch.is_tensor(v) and v.is_floating_point()}
                s = {name: v for name, v in s.items() if name not in kept[k]}
            state[k] = s
        super().load_state_dict({**{k: v for k, v in state_dict.items() if k != "fusedopt"},
                                 "state": state})
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for k, p in zip(saved, params):
            for name, value in kept.get(k, {}).items():
                self.state[p][name] = value.to(device=p.device)
        if "skipped_steps" in extra:
            self._carry.skipped = extra["skipped_steps"].clone()

    # ---- fused clipping -------------------------------------------------------------------------
    def clip_grad_norm_(self, max_norm, norm_type=2.0, error_if_nonfinite=False, *,
                        grad_scale=None):
        """Norm of every grad of this optimizer's params, as a 0-d tensor (``grad_norm``'s
        dtype), with no host sync.

        Note [clip inside the step]: the coefficient min(1, max_norm / (norm + 1e-6)) is not
        applied to the grads here; the next step() multiplies each grad by it as it reads it,
        saving a read and a write of every grad (torch's clip_grad_norm_ + step: 40 B/param for
        fp32 AdamW; fused: 32). zero_grad() drops a pending coefficient. The coefficient is in
        the norm's dtype, as torch's; each kernel rounds it to its compute type (an fp64 grad
        is clipped by the float64 value).
        ``grad_scale``: the grads are still multiplied by this AMP loss scale (a 0-d tensor); the
        norm returned and clipped is that of the unscaled grads, and the step must then get the
        same scale as ``self.grad_scale`` (the GradScaler contract).
        """
        norm_type = clip.check_clip_args(max_norm, norm_type)
        total = self.grad_norm(norm_type)
        if grad_scale is not None:
            # the same rounding of 1/scale as torch's unscale_ and as the step's inv_scale
            total = total * grad_scale.double().reciprocal().float().to(total.device)
        self._defer_clip(clip.clip_coefficient(total, max_norm, norm_type, error_if_nonfinite),
                         total)
        return total

    def owns_exactly(self, params):
        """Whether ``params`` (a list) are exactly the parameters this optimizer steps, in any
        order (fusedopt.clip_grad_norm_ then defers its scaling into this optimizer's step)."""
        mine = self._param_ids
        if self._buckets is None or len(params) != len(mine):
            return False
        ids = [id(p) for p in params]
        return ids == mine or set(ids) == set(mine)

    def grad_norm(self, norm_type=2.0):
        """Norm of every grad of this optimizer's params (across shards for DTensor params):
        a 0-d tensor, float64 where a grad is fp64, else float32 (Note [norm dtype],
        fusedopt/backends/__init__.py), one multi-tensor reduction per bucket, no host sync."""
        if torch.compiler.is_compiling():
            self._init_group()
            return self._global_norm(self._buckets, float(norm_type))
        return self._global_norm(self._current_buckets(), float(norm_type))

    def _global_norm(self, buckets, norm_type):
        """Norm of every grad of this optimizer: one reduction per bucket, reduced across shards
        for DTensor buckets; other orders than 2 and inf go through torch's vector_norm."""
        norms = []
        for b in buckets:
            local = _ops.bucket_norm(b, norm_type)
            norms.append(_distributed.reduce_norm(local, norm_type, b.spec.placement))
        return backends.combine_norms(norms, norm_type) if norms else torch.zeros(())

    def _defer_clip(self, coef, norm):
        carry = self._carry
        if carry.clip is None:
            carry.clip, carry.norm = coef, norm
        else:   # clipped twice before a step: both coefficients apply, as with torch
            carry.clip = carry.clip * coef
            carry.norm = norm


class _Carry:
    """What a step takes over from the calls before it: a deferred clip coefficient and its
    norm (Note [clip inside the step]), and the count of skipped steps. A plain object, not
    attributes of the optimizer: torch.compile (torch 2.11-2.13) drops attribute writes to an
    optimizer made in compiled code, and keeps those to other objects."""

    def __init__(self):
        self.clip = self.norm = None
        self.skipped = torch.zeros(())


def _on_device(scalars, device):
    return {k: (None if v is None else v.to(device, non_blocking=True)) for k, v in scalars.items()}
