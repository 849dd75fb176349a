"""How far a low-precision run drifts from its fp32 twin (issue 25): the problems, the ideal, and
the measure, shared by tests/test_precision.py (the targets) and ``python -m
fusedopt.bench.drift`` (the README's "Low precision" table).

A run trains one model in a low dtype ``dt`` (forward and backward in ``dt``) for ``steps``
steps; its *drift* is mean |w - w_fp32| over the weights against the same run in fp32 with
torch.optim. ``w`` is the run's most accurate value of the weights: the fp32 master where there
is one, param + compensation under ``kahan_sum``, else the param. The *ideal* is what apex's
and Transformer Engine's users mean by master weights: torch.optim on an fp32 copy, with fp32
states, the forward and backward in ``dt`` on its rounding.
"""
import argparse
import json

import torch

import fusedopt

PROBLEMS = ("regression", "classifier")

# (torch class, fusedopt class, hyper-parameters): AdamW as issue 25 states it, and momentum SGD
OPTIMIZERS = {
    "adamw": (torch.optim.AdamW, fusedopt.FusedAdamW, dict(lr=3e-4, weight_decay=1e-2)),
    "sgd": (torch.optim.SGD, fusedopt.FusedSGD, dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)),
}

# the options of each fusedopt mode (README, "Low precision")
MODES = {
    "plain": {},
    "master": dict(master_weights=True),
    "master+bf16 states": dict(master_weights=True, state_dtype=torch.bfloat16),
    "kahan": dict(kahan_sum=True),
}


def _data(problem, seed=0):
    """(inputs, targets, initial weights) in fp32, from a generator of their own."""
    g = torch.Generator().manual_seed(seed)
    if problem == "regression":                  # 32x32 linear regression, issue 25's
        x = torch.randn(256, 32, generator=g)
        w_true = torch.randn(32, 32, generator=g) / 32 ** 0.5
        y = x @ w_true + 0.01 * torch.randn(256, 32, generator=g)
        return x, y, [torch.randn(32, 32, generator=g) * 0.1]
    # a two-layer classifier, cross-entropy over 10 classes of Gaussian blobs
    centers = torch.randn(10, 32, generator=g)
    labels = torch.randint(0, 10, (512,), generator=g)
    x = centers[labels] + 0.7 * torch.randn(512, 32, generator=g)
    return x, labels, [torch.randn(32, 64, generator=g) / 32 ** 0.5,
                       torch.randn(64, 10, generator=g) / 8]


def _loss(problem, x, y, weights):
    if problem == "regression":
        return ((x @ weights[0] - y) ** 2).mean()
    logits = torch.relu(x @ weights[0]) @ weights[1]
    return torch.nn.functional.cross_entropy(logits, y)


def _train(problem, dtype, steps, make_opt, read):
    """Train ``steps`` steps in ``dtype``: ``make_opt(params)`` -> optimizer over the dtype's
    params; returns ``read(opt, params)``, the run's fp32 weights."""
    x, y, init = _data(problem)
    params = [torch.nn.Parameter(w.to(dtype)) for w in init]
    opt = make_opt(params)
    xs = x.to(dtype)
    for _ in range(steps):
        opt.zero_grad()
        _loss(problem, xs, y if problem == "classifier" else y.to(dtype), params).backward()
        opt.step()
    return read(opt, params)


def fp32_twin(problem, optimizer, steps):
    torch_cls, _, hp = OPTIMIZERS[optimizer]
    return _train(problem, torch.float32, steps, lambda ps: torch_cls(ps, **hp),
                  lambda opt, ps: [p.detach().clone() for p in ps])


class _Ideal:
    """torch.optim on fp32 copies; forward and backward in ``dtype`` on their roundings. With
    ``round_states``, every floating state is rounded to that dtype after each step (round to
    nearest): the run whose states stagnate, the baseline compact states must beat."""

    def __init__(self, torch_cls, hp, params, round_states=None):
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_() for p in params]
        self.inner = torch_cls(self.masters, **hp)
        self.round_states = round_states

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p, m in zip(self.params, self.masters):
            m.grad = p.grad.float()
        self.inner.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
                for name, s in self.inner.state[m].items():
                    if self.round_states is not None and name != "step" and torch.is_tensor(s):
                        s.copy_(s.to(self.round_states))


def ideal(problem, optimizer, dtype, steps, round_states=None):
    torch_cls, _, hp = OPTIMIZERS[optimizer]
    return _train(problem, dtype, steps,
                  lambda ps: _Ideal(torch_cls, hp, ps, round_states),
                  lambda opt, ps: [m.detach().clone() for m in opt.masters])


def _weights_of(opt, params):
    out = []
    for p in params:
        state = opt.state[p]
        if "master_param" in state:
            out.append(state["master_param"].clone())
        elif "compensation" in state:
            out.append(p.detach().float() + state["compensation"].float())
        else:
            out.append(p.detach().float())
    return out


def fused(problem, optimizer, dtype, steps, mode, backend):
    _, fused_cls, hp = OPTIMIZERS[optimizer]
    return _train(problem, dtype, steps,
                  lambda ps: fused_cls(ps, backend=backend, **hp, **MODES[mode]), _weights_of)


def drift(weights, reference):
    return (torch.cat([w.flatten() for w in weights]) -
            torch.cat([r.flatten() for r in reference])).abs().mean().item()


def table(backend, steps=300):
    """{problem: {optimizer: {dtype: {run: drift}}}} for every mode, the ideal and the ideal
    with round-to-nearest bf16 states."""
    out = {}
    for problem in PROBLEMS:
        for optimizer in OPTIMIZERS:
            twin = fp32_twin(problem, optimizer, steps)
            for dtype in (torch.bfloat16, torch.float16):
                row = {"ideal": drift(ideal(problem, optimizer, dtype, steps), twin),
                       "ideal, bf16 states (nearest)": drift(
                           ideal(problem, optimizer, dtype, steps, torch.bfloat16), twin)}
                for mode in MODES:
                    row[mode] = drift(fused(problem, optimizer, dtype, steps, mode, backend), twin)
                out.setdefault(problem, {}).setdefault(optimizer, {})[str(dtype)] = row
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    result = {"backend": args.backend, "steps": args.steps, "torch": torch.__version__,
              "drift": table(args.backend, args.steps)}
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
