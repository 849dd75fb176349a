"""Shared builders for the optimizer tests: parameter sets, grads, and the torch twin."""
import copy

import torch

import fusedopt
from tolerances import assert_close, assert_within_ulp

CPU_BACKENDS = [b for b in ("reference", "cpu") if b in fusedopt.available_backends()]

FUSED = {"Adam": fusedopt.FusedAdam, "AdamW": fusedopt.FusedAdamW, "SGD": fusedopt.FusedSGD}
TORCH = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}

# (algorithm, constructor kwargs): every option of issue #2
CASES = [
    ("Adam", {}),
    ("Adam", dict(weight_decay=0.1)),
    ("Adam", dict(amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(maximize=True, weight_decay=0.05)),
    ("Adam", dict(decoupled_weight_decay=True, weight_decay=0.1)),
    ("AdamW", {}),
    ("AdamW", dict(amsgrad=True, maximize=True)),
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
]
CASE_IDS = [f"{a}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for a, kw in CASES]


# three groups with different hyper-parameters per algorithm; SGD's third is momentum-free, which
# lands in a bucket of its own (not beside nesterov, which needs a momentum)
GROUP_OVERRIDES = {
    "Adam": [{"lr": 1e-2}, {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.2}, {"eps": 1e-6}],
    "SGD": [{"lr": 0.02}, {"weight_decay": 0.05}, {"momentum": 0.0, "dampening": 0.0}],
}
GROUP_OVERRIDES["AdamW"] = GROUP_OVERRIDES["Adam"]


def group_overrides(algo, kwargs):
    groups = GROUP_OVERRIDES[algo]
    return groups[:2] + [{}] if kwargs.get("nesterov") else groups


def make_params(shapes, dtype=torch.float32, noncontiguous=()):
    """Parameters of the given shapes; indices in ``noncontiguous`` are transposed views."""
    params = []
    for i, shape in enumerate(shapes):
        if i in noncontiguous:
            t = torch.randn(*reversed(shape), dtype=torch.float64).t()
        else:
            t = torch.randn(*shape, dtype=torch.float64)
        params.append(torch.nn.Parameter(t.to(dtype)))
    return params


def split_groups(params, overrides):
    groups = [{"params": [], **o} for o in overrides]
    for i, p in enumerate(params):
        groups[i % len(groups)]["params"].append(p)
    return groups


def clone_params(params, dtype=None):
    out = []
    for p in params:
        c = torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype)
        c.copy_(p.detach())
        out.append(torch.nn.Parameter(c))
    return out


def set_grads(param_sets, step, none_every=4):
    """The same grads (made in fp64, cast to each set's dtype) on every set; on some steps a
    parameter's grad is None (index-dependent), including on the first step."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p0 in enumerate(param_sets[0]):
        none = none_every and (step + i) % none_every == none_every - 1
        g = None if none else torch.randn(p0.shape, generator=gen, dtype=torch.float64)
        for params in param_sets:
            p = params[i]
            if g is None:
                p.grad = None
            else:
                p.grad = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype,
                                             device=p.device).copy_(g)


def build_pair(algo, kwargs, params, overrides, backend, torch_kwargs=None):
    """(fusedopt optimizer, torch for-loop optimizer) over separate copies of ``params``."""
    ours, theirs = clone_params(params), clone_params(params)
    fused = FUSED[algo](split_groups(ours, overrides), backend=backend, **kwargs)
    reference = TORCH[algo](split_groups(theirs, overrides),
                            **dict(kwargs, **(torch_kwargs or {"foreach": False})))
    return fused, ours, reference, theirs


def state_of(opt, params):
    return [copy.copy(opt.state.get(p, {})) for p in params]


def start_from_same_states(ours, opt, theirs, opt_theirs):
    """Copy every state tensor of ``opt`` (masters, fp16/bf16 moments, steps) into
    ``opt_theirs``'s, in place, before a step. A fused kernel and torch's separate ops may round
    a stored fp16/bf16 state to either neighbour of the same fp32 value (one ulp, which
    compare_master_runs allows); without this, such a flip moves every later step of the master
    (H200, 2026-11-27: 2 of 70,000 bf16 Adam masters 2.3e-5 apart after 12 steps). Compared
    from the same states, each step's masters agree to fp32 rounding."""
    for p, q in zip(ours, theirs):
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value) and key in opt_theirs.state.get(q, {}):
                opt_theirs.state[q][key].copy_(value)


def compare_runs(ours, theirs, opt_ours, opt_theirs, where):
    """Params AND every state of two runs (step counters included): tensors on the host with the
    tolerance table's bounds, other values (a rounding seed) equal."""
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_close(p.detach().cpu(), q.detach().cpu(), f"{where}: param {i} {tuple(p.shape)}")
        s, t = opt_ours.state.get(p, {}), opt_theirs.state.get(q, {})
        assert set(s) == set(t), f"{where}: param {i} state keys {sorted(s)} != {sorted(t)}"
        for key, value in t.items():
            if torch.is_tensor(value):
                assert_close(s[key].detach().cpu(), value.detach().cpu(),
                             f"{where}: param {i} state[{key!r}]")
            else:
                assert s[key] == value, f"{where}: param {i} state[{key!r}]: {s[key]} != {value}"


def compare_master_runs(ours, opt, theirs, opt_theirs, where):
    """Two master-weights runs (Note [master copy]): masters and fp32 states to fp32 rounding,
    each of ``ours`` exactly its master's rounding, fp16/bf16 states to one ulp of their dtype,
    same steps."""
    for i, (p, q) in enumerate(zip(ours, theirs)):
        s, t = opt.state.get(p, {}), opt_theirs.state.get(q, {})
        assert set(s) == set(t), f"{where}: param {i} state keys {sorted(s)} != {sorted(t)}"
        if "master_param" not in s:
            assert torch.equal(p.detach().cpu(), q.detach().cpu()), f"{where}: param {i}"
            continue
        master = s["master_param"]
        assert master.dtype == torch.float32
        assert torch.equal(p.detach(), master.to(p.dtype)), f"{where}: param {i} != its master"
        for key in t:
            a, b = s[key].detach().cpu(), t[key].detach().cpu()
            if key in ("master_param", "step") or a.dtype == torch.float32:
                assert_close(a, b, f"{where}: param {i} state[{key!r}]")
            else:
                assert_within_ulp(a, b, f"{where}: param {i} state[{key!r}]")
