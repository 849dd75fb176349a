"""torch.compile (issue 18, Note [compiled steps] in fusedopt/_ops.py): a compiled training step
with fusedopt inside works for every class and backend, equals the same steps run eagerly, and
breaks the graph no more often than torch.optim's (only at the backward)."""
import logging
import warnings

import pytest
import torch
import torch._dynamo

import fusedopt
from conftest import CPU_BACKENDS
from tolerances import assert_close

BACKENDS = CPU_BACKENDS + (["triton"] if "triton" in fusedopt.available_backends() else [])
X, Y = torch.randn(8, 16, generator=torch.Generator().manual_seed(5)), \
    torch.randn(8, 1, generator=torch.Generator().manual_seed(6))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._logging.set_logs(dynamo=logging.ERROR)      # "record_function will be ignored"
    yield
    torch._dynamo.reset()


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


# per class: options that exercise its flags and states
OPTIONS = {"AdamW": {}, "Adam": dict(weight_decay=0.01, amsgrad=True),
           "SGD": dict(momentum=0.9, nesterov=True), "Lion": dict(weight_decay=0.1),
           "LARS": dict(lr=0.1, momentum=0.9, weight_decay=1e-4), "LAMB": dict(max_grad_norm=0.5)}


def optimizer(algo, m, backend):
    groups = [{"params": [m[0].weight, m[0].bias], "lr": 1e-2},
              {"params": list(m[2].parameters()), "lr": 3e-3}]
    return getattr(fusedopt, f"Fused{algo}")(groups, backend=backend, **OPTIONS[algo])


def train_step(m, o, clip=None, scaler=None, schedulers=()):
    def step():
        loss = torch.nn.functional.mse_loss(m(X), Y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(o)
            scaler.update()
        else:
            loss.backward()
            if clip == "torch":
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
            elif clip == "fusedopt":
                fusedopt.clip_grad_norm_(m.parameters(), 0.1)
            elif clip == "method":
                o.clip_grad_norm_(0.1)
            o.step()
        for s in schedulers:
            s.step()
        o.zero_grad()
        return loss
    return step


def run(algo, backend, compiled, steps=5, clip=None, scaler=False, schedulers=(),
        compiler="aot_eager"):
    m = model()
    o = optimizer(algo, m, backend)
    built = [make(o) for make in schedulers]
    amp = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) if scaler else None
    fn = train_step(m, o, clip, amp, built)
    if compiled:
        fn = torch.compile(fn, backend=compiler)
    for _ in range(steps):
        fn()
    return list(m.parameters()), o


def assert_same(compiled, eager, what):
    (ps, po), (qs, qo) = compiled, eager
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert_close(p.detach(), q.detach(), f"{what}: param {i}")
        for key, value in qo.state[q].items():
            assert_close(po.state[p][key], value, f"{what}: param {i} state[{key!r}]")
    assert [g["lr"] for g in po.param_groups] == [g["lr"] for g in qo.param_groups]


TORCH_SCHED = (lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algo", list(OPTIONS))
def test_compiled_step_equals_eager(algo, backend):
    """Clip (the optimizer's own, deferred into the step), step, a torch scheduler, zero_grad."""
    what = f"{algo} {backend}"
    kw = dict(clip="method", schedulers=TORCH_SCHED)
    assert_same(run(algo, backend, True, **kw), run(algo, backend, False, **kw), what)


@pytest.mark.parametrize("case", ["clip-torch", "clip-fusedopt", "grad-scaler",
                                  "fusedopt-scheduler"])
def test_compiled_step_with(case):
    kw = {"clip-torch": dict(clip="torch"), "clip-fusedopt": dict(clip="fusedopt"),
          "grad-scaler": dict(scaler=True),
          "fusedopt-scheduler": dict(schedulers=(lambda o: fusedopt.schedulers.CosineAnnealingLR(
              o, T_max=4, by_epoch=False),))}[case]
    backend = CPU_BACKENDS[-1]
    for algo in ("AdamW", "Adam", "SGD"):
        assert_same(run(algo, backend, True, **kw), run(algo, backend, False, **kw),
                    f"{case} {algo}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(master_weights=True), dict(kahan_sum=True)], ids=str)
@pytest.mark.parametrize("algo", ["AdamW", "SGD"])
def test_compiled_step_in_precision_modes(algo, options, backend):
    """bf16 params with fp32 masters and fp32 states (Note [master copy]), or compensations and
    stochastically rounded bf16 states (Note [precision modes]): the ops get the mode's list as
    the bucket's last state list and the seeds, and the compiled steps equal the eager ones bit
    for bit, params and every state."""
    runs = []
    for compiled in (True, False):
        m = model().to(torch.bfloat16)
        o = getattr(fusedopt, f"Fused{algo}")(m.parameters(), lr=1e-2, backend=backend,
                                             **options, **OPTIONS[algo])

        def step(m=m, o=o):
            torch.nn.functional.mse_loss(m(X.bfloat16()).float(), Y).backward()
            o.clip_grad_norm_(0.1)
            o.step()
            o.zero_grad()
        fn = torch.compile(step, backend="aot_eager") if compiled else step
        for _ in range(3):
            fn()
        runs.append((list(m.parameters()), o))
    (ps, po), (qs, qo) = runs
    for i, (p, q) in enumerate(zip(ps, qs)):
        if "master_param" in po.state[p]:
            master = po.state[p]["master_param"]
            assert master.dtype == torch.float32 and torch.equal(p.detach(), master.bfloat16())
        assert torch.equal(p.detach(), q.detach()), f"{algo} {backend}: param {i}"
        for name, value in po.state[p].items():
            other = qo.state[q][name]
            same = torch.equal(value, other) if torch.is_tensor(value) else value == other
            assert same, f"{algo} {backend} {options}: state[{i}][{name!r}]"


def test_the_issues_example_compiles_with_inductor():
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    ref.load_state_dict(m.state_dict())
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    outs = []
    for net, compiled in ((m, True), (ref, False)):
        o = fusedopt.FusedAdamW(net.parameters(), lr=1e-3)

        def train_step(net=net, o=o):
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            o.step()
            o.zero_grad()
            return loss
        fn = torch.compile(train_step) if compiled else train_step
        for _ in range(3):
            fn()
        outs.append(list(net.parameters()))
    for i, (p, q) in enumerate(zip(*outs)):
        # inductor computes the forward and backward in its own order: grads differ by rounding
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6,
                                   msg=lambda msg: f"param {i}: {msg}")


def test_compiled_bound_step():
    m = model()
    o = optimizer("AdamW", m, CPU_BACKENDS[-1])
    ref_m = model()
    ref = optimizer("AdamW", ref_m, CPU_BACKENDS[-1])
    step = torch.compile(o.step, backend="aot_eager")
    for _ in range(3):
        for net in (m, ref_m):
            torch.nn.functional.mse_loss(net(X), Y).backward()
        step()
        ref.step()
        o.zero_grad()
        ref.zero_grad()
    assert_same((list(m.parameters()), o), (list(ref_m.parameters()), ref), "compiled o.step")


def test_hyper_parameters_written_between_compiled_steps():
    """A float lr written into a dict (a scheduler outside the compiled function) reaches the
    graph: at most one recompile (the float then becomes a graph input); a tensor lr too."""
    from torch._dynamo.utils import counters
    counters.clear()
    results = []
    for compiled in (True, False):
        m = model()
        o = optimizer("AdamW", m, CPU_BACKENDS[-1])
        lr = torch.tensor(0.01)
        o.param_groups[1]["lr"] = lr
        step = train_step(m, o)
        if compiled:
            step = torch.compile(step, backend="aot_eager")
        for i in range(6):
            o.param_groups[0]["lr"] = 0.01 / (i + 1)
            lr.fill_(0.003 * 0.9 ** i)
            step()
        results.append((list(m.parameters()), o))
    assert_same(*results, "lr writes")
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])


def test_compiled_skip_nonfinite_counts_like_eager():
    counts = []
    for compiled in (True, False):
        m = model()
        o = fusedopt.FusedAdamW(m.parameters(), backend=CPU_BACKENDS[-1], skip_nonfinite=True)

        def step(bad):
            torch.nn.functional.mse_loss(m(X), Y).backward()
            m[0].bias.grad[0] = bad
            o.step()
            o.zero_grad()
        fn = torch.compile(step, backend="aot_eager") if compiled else step
        for bad in (0.0, float("inf"), 0.0, float("nan"), 0.0):
            fn(torch.tensor(bad))
        counts.append((o.skipped_steps.item(), [p.detach().clone() for p in m.parameters()]))
    assert counts[0][0] == counts[1][0] == 2
    for p, q in zip(counts[0][1], counts[1][1]):
        assert_close(p, q, "skip_nonfinite")


def _breaks(make_opt, clip):
    m = model()
    o = make_opt(m)
    step = train_step(m, o, clip)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._dynamo.explain(step)().graph_break_count


@pytest.mark.parametrize("clip", [None, "torch"])
@pytest.mark.parametrize("algo", ["AdamW", "SGD"])
def test_graph_breaks_no_more_than_torch_optim(algo, clip):
    """A compiled training step breaks only at the backward (torch.optim's foreach step breaks
    there too, and once more around its step when clip_grad_norm_ precedes it)."""
    torch_opt = {"AdamW": lambda m: torch.optim.AdamW(m.parameters(), foreach=True),
                 "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9,
                                                  foreach=True)}[algo]
    fused = {"AdamW": lambda m: fusedopt.FusedAdamW(m.parameters(), backend=CPU_BACKENDS[-1]),
             "SGD": lambda m: fusedopt.FusedSGD(m.parameters(), lr=1e-3, momentum=0.9,
                                                backend=CPU_BACKENDS[-1])}[algo]
    ours, theirs = _breaks(fused, clip), _breaks(torch_opt, clip)
    assert ours == 1 and ours <= theirs, (ours, theirs)
    if clip:
        assert _breaks(fused, "fusedopt") == 1 and _breaks(fused, "method") == 1


def test_custom_ops_have_fake_implementations():
    """torch.library's own checks of the ops: schema, fake kernel, mutation annotations."""
    from fusedopt import _library
    m = model()
    o = optimizer("AdamW", m, CPU_BACKENDS[-1])
    torch.nn.functional.mse_loss(m(X), Y).backward()
    o.step()
    (b,) = o._buckets
    spec = b.spec
    args = (spec.params, [p.grad for p in spec.params], [s for ss in spec.states for s in ss],
            spec.steps, b.hp, spec.group_index, "adam", b.flags, None, None, None,
            b.backend.NAME, spec.weights, spec.seeds)
    torch.library.opcheck(_library.step_, args, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(_library.norm, ([p.grad for p in spec.params], 2.0, b.backend.NAME))
    grads = [p.grad.clone() for p in spec.params]
    torch.library.opcheck(_library.scale_, (grads, torch.tensor(0.5), b.backend.NAME),
                          test_utils=("test_schema", "test_faketensor"))
