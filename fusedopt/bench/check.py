"""Every implementation is checked against the reference backend before it is timed.

Note [checked baselines]: a benchmark that times a wrong implementation draws wrong conclusions.
torch 2.12/2.13's fused CPU SGD skips the vector loop of fp16/bf16 updates (pytorch#191763):
with ``fused=True`` not one element of a bf16 tensor of 64 elements or more moves, and
``fusedopt-bench --dtype bf16`` reported fusedopt "0.5x" against that no-op. torch's own
test_optim holds fused to its for-loop on tensors smaller than a vector, where only the (correct)
tail loop runs. So before timing, each implementation takes ``STEPS`` steps on a set of its own
beside the reference backend (the oracle: plain PyTorch, fp32 math rounded to the dtype each
step), through the same step as the timed one (clip, AMP, master weights, two groups with
different lr), and its params are compared with the oracle's in ulps of the dtype:

- **The set.** Tensors of 1, 31, 257, 4099 and 2^17 + 3 elements: past every vector width
  (AVX-512: 16 fp32 or 32 bf16/fp16 lanes, unrolled loops of 64), with tails, and across
  fusedopt's chunks. Params of magnitude in [0.5, 1) with random signs, so one ulp is one
  spacing of that binade (bf16 2^-8, fp16 2^-11, fp32 2^-24). Grads g_t = b (1 + u_t / 2),
  |b| uniform in [0.3, 0.6) with random signs, u_t uniform in [-1, 1) each step (so Adam's
  m / sqrt(v) is no mere sign), times the loss scale 2^16 under ``--amp`` (at most 0.9 * 2^16,
  finite in fp16). Grads bounded away from 0 keep fp16 Adam's v = (1 - beta2) g^2 >= 2e-5,
  above fp16's underflow, and g + wd*p (Adam's L2) from cancelling: both made correct
  implementations disagree by tens of ulps with N(0, 1e-3) grads, and say nothing of the code.
  ``--clip`` clips to half the first step's grad norm (coefficient about 1/2), not to the run's
  max_norm, which would shrink the grads to 1/sqrt(numel) and underflow fp16 again.
- **The step size.** The run's hyper-parameters with lr scaled so that the oracle's first step
  moves the median element by ``TARGET_MOVE`` = 0.04 (measured on an fp32 oracle step; every
  algorithm's first step is linear in lr): 10 ulps of bf16, 82 of fp16 per step. An update of
  less than half an ulp would leave a correct bf16 step and a no-op alike.
- **The bound**, ``BOUND_PER_STEP`` = 2 ulps per step (8 after 4 steps), on the largest error over
  all elements, each in ulps at max(|p0|, |p_oracle|). Per step, each side rounds p to the dtype
  once (half an ulp each: 1 ulp apart when their unrounded values agree). The unrounded values
  differ by what earlier steps left (additive updates carry it 1:1) and by the update's own
  rounding: an implementation computing in the dtype (torch's for-loop in bf16) rounds about 10
  intermediates of relative error 2^-9 each, 10 * 2^-9 * 0.04 = 0.0008, 0.2 ulp of bf16 (SGD's
  momentum grows the update to 3.4x by step 4: 0.7 ulp). So a correct implementation stays under
  about 1.7 ulps per step; the bound leaves room for that. Measured (torch 2.13, CPU, adam, adamw
  and sgd, each alone, with --clip and with --amp, in fp32, bf16 and fp16): torch's for-loop,
  foreach and fused and fusedopt's backends (the cpu backend's Lion, LARS and LAMB too, with
  --clip, plain and with master weights) lie 0 to 4 ulps from the oracle after 4 steps, while
  the oracle moved a median element 40 (Adam, bf16) to 589 (LARS, fp16) ulps; torch's fused SGD,
  which leaves the params unchanged (#191763), lies 186 ulps off in bf16 and 1487 in fp16. In
  fp32 an error of the update above ~1e-6 relative shows.

A wrong implementation is timed and shown, marked wrong with its error, and is never the
baseline of the "vs" column (report.records picks the fastest correct torch implementation).
"""
import torch

from fusedopt.bench import impls as _impls

SHAPES = ((1,), (31,), (257,), (4099,), ((1 << 17) + 3,))
STEPS = 4
TARGET_MOVE = 0.04
BOUND_PER_STEP = 2.0
ORACLE = "fusedopt-reference"
_SEED = 191763


def oracle_of(impl):
    """The oracle ``impl`` is held to: the reference backend, in its precision mode."""
    return ORACLE + _impls.split(impl)[1]


def is_oracle(impl):
    return _impls.split(impl)[0] == ORACLE


class _Set:
    """The check's initial params and per-step grads (fp64, on the CPU)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(_SEED)

        def signed(n, low, high):
            mag = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
            return torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -mag, mag)
        self.params = [signed(n, 0.5, 1.0) for (n,) in SHAPES]
        base = [signed(n, 0.3, 0.6) for (n,) in SHAPES]
        self.grads = [[b * (1 + 0.5 * (2 * torch.rand(b.shape, generator=gen,
                                                      dtype=torch.float64) - 1)) for b in base]
                      for _ in range(STEPS)]
        self.numel = sum(n for (n,) in SHAPES)
        self.max_norm = 0.5 * torch.cat(self.grads[0]).norm().item()


def _run(impl, optimizer, dtype, device, data, hp, *, clip, amp, steps=STEPS):
    """The params of ``impl`` after ``steps`` steps on ``data`` (fp64 copies on the CPU)."""
    params = [p.to(dtype).to(device).requires_grad_() for p in data.params]
    groups = [{"params": params[0::2], "lr": hp["lr"]},
              {"params": params[1::2], "lr": hp["lr"] / 2}]
    opt = _impls.build(impl, optimizer, groups, device, hp=hp)
    step = _impls.make_step(impl, opt, params, clip=clip, amp=amp, device=device,
                            max_norm=data.max_norm)
    scale = 2.0 ** 16 if amp else 1.0     # the scaler's initial scale, as measure.make_params
    for grads in data.grads[:steps]:
        for p, g in zip(params, grads):
            p.grad = (g * scale).to(dtype).to(device)
        step()
    return [p.detach().to("cpu", torch.float64) for p in params]


def _spacing(x, dtype):
    """The ulp of ``dtype`` at each |x| (fp64, x > 0): eps * 2^(exponent - 1)."""
    _, exp = torch.frexp(x)
    return torch.ldexp(torch.full_like(x, torch.finfo(dtype).eps), exp - 1)


def ulps(params, oracle, start, dtype):
    """(largest |params - oracle|, median |oracle - start|) in ulps of ``dtype`` at
    max(|start|, |oracle|), over all elements."""
    p, q, s = (torch.cat([t.reshape(-1) for t in ts]) for ts in (params, oracle, start))
    unit = _spacing(torch.maximum(s.abs(), q.abs()), dtype)
    err = ((p - q).abs() / unit).nan_to_num(nan=float("inf")).max().item()
    moved = ((q - s).abs() / unit).median().item()
    return err, moved


def check_all(impl_names, *, optimizer, dtype, clip, amp, device):
    """{impl: check record} for the implementations that can run here: ``verdict`` ("ok",
    "wrong", "oracle" or "error"), ``err_ulps``, ``bound_ulps``, ``moved_ulps`` (the oracle's
    median movement, for scale), ``against``, ``steps``, ``numel``, ``lr``; ``reason`` for an
    error."""
    live = [i for i in impl_names if _impls.unavailable_reason(i, optimizer, device) is None]
    if not live:
        return {}
    data = _Set()
    hp = dict(_impls.hyper(optimizer))
    out = {}
    try:
        q1 = _run(ORACLE, optimizer, torch.float32, device, data, hp, clip=clip, amp=amp, steps=1)
        move = torch.cat([(a - b).abs() for a, b in zip(q1, data.params)]).median().item()
        if move > 0:
            hp["lr"] *= TARGET_MOVE / move
    except Exception as exc:       # the oracle cannot run this: nothing is checked
        why = f"the oracle {ORACLE} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return {i: dict(verdict="error", reason=why) for i in live}
    start = [p.to(dtype).double() for p in data.params]
    common = dict(bound_ulps=BOUND_PER_STEP * STEPS, steps=STEPS, numel=data.numel, lr=hp["lr"])
    oracles = {}
    for impl in live:
        against = oracle_of(impl)
        try:
            if against not in oracles:
                oracles[against] = _run(against, optimizer, dtype, device, data, hp, clip=clip,
                                        amp=amp)
            oracle = oracles[against]
            params = oracle if impl == against else _run(impl, optimizer, dtype, device, data,
                                                         hp, clip=clip, amp=amp)
        except Exception as exc:
            out[impl] = dict(common, verdict="error", against=against,
                             reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        err, moved = ulps(params, oracle, start, dtype)
        verdict = "oracle" if is_oracle(impl) else "ok" if err <= common["bound_ulps"] else "wrong"
        out[impl] = dict(common, verdict=verdict, against=against, err_ulps=err, moved_ulps=moved)
    return out


def _n(x):
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def describe(rec):
    """A short account of a check record: '186 ulps from fusedopt-reference after 4 steps (bound
    8; the oracle moved a median element 73 ulps: off by 255% of that)'."""
    if rec.get("verdict") == "error":
        return f"check failed: {rec.get('reason')}"
    text = (f"{_n(rec['err_ulps'])} ulps from {rec['against']} after {rec['steps']} steps (bound "
            f"{rec['bound_ulps']:g}; the oracle moved a median element {_n(rec['moved_ulps'])} "
            "ulps")
    if rec["moved_ulps"] > 0:
        text += f": off by {_n(100 * rec['err_ulps'] / rec['moved_ulps'])}% of that"
    return text + ")"
