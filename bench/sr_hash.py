"""Does stochastic rounding's element hash need all of fmix32? (Note [stochastic rounding],
docs/internals.md.) bf16 AdamW with stochastically rounded bf16 states, 300 steps of both drift
problems (fusedopt.bench.drift), on the reference backend, once with the element hash the
backends use (fmix32's first round) and once with the whole finaliser, over several seed sets:
the mean and standard deviation of each mode's drift from the fp32 twin. First, for a few keys,
how uniform each hash's 16 bits are over 2^22 consecutive indices (chi-square over 256 bins, 255
degrees of freedom) and how they correlate with their neighbours' and with those of indices 2^16
apart.

    python bench/sr_hash.py [--seeds 8] [--json PATH]
"""
import argparse
import json
import statistics

import torch

from fusedopt import _precision
from fusedopt.backends import reference
from fusedopt.bench import drift

PROBLEMS = ("regression", "classifier")
MODES = ("master+bf16 states", "kahan")
HASHES = {"first round (the backends')": reference.sr_mix, "whole fmix32": reference.fmix32}


def uniformity(keys=(0x12345678, 0xDEADBEEF, 0), numel=1 << 22, t=1):
    """{hash: [{key, chi2, lag1, lag65536}]}: the bits r of Note [stochastic rounding] at step t."""
    out = {}
    for name, hash_fn in HASHES.items():
        mix, out[name] = reference.sr_mix, []
        reference.sr_mix = hash_fn
        try:
            for key in keys:
                r = (reference.random_bits(key, numel, t) >> 16).double() / 65536
                counts = torch.histc(r, bins=256, min=0, max=1)
                expected = numel / 256
                lag = {f"lag{d}": torch.corrcoef(torch.stack([r[:-d], r[d:]]))[0, 1].item()
                       for d in (1, 1 << 16)}
                out[name].append(dict(key=key, chi2=((counts - expected) ** 2 / expected)
                                      .sum().item(), **lag))
        finally:
            reference.sr_mix = mix
    return out


def run(seeds):
    """{hash: {problem/mode: [drift per seed set]}}: seed set s moves every param's seed to that
    of position + 1000 s."""
    seed_of, mix = _precision.seed_of, reference.sr_mix
    twins = {p: drift.fp32_twin(p, "adamw", 300) for p in PROBLEMS}
    out = {name: {} for name in HASHES}
    try:
        for s in range(seeds):
            _precision.seed_of = lambda position, s=s: seed_of(position + 1000 * s)
            for name, hash_fn in HASHES.items():
                reference.sr_mix = hash_fn
                for p in PROBLEMS:
                    for mode in MODES:
                        weights = drift.fused(p, "adamw", torch.bfloat16, 300, mode, "reference")
                        out[name].setdefault(f"{p}/{mode}", []).append(
                            drift.drift(weights, twins[p]))
    finally:
        _precision.seed_of, reference.sr_mix = seed_of, mix
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--json", help="write the drifts here")
    args = parser.parse_args(argv)
    spread = uniformity()
    for name, rows in spread.items():
        for row in rows:
            print(f"{name:28} key {row['key']:#010x}: chi2 {row['chi2']:.0f}, correlation with "
                  f"the next index {row['lag1']:+.4f}, with index + 2^16 {row['lag65536']:+.4f}")
    result = run(args.seeds)
    for name, rows in result.items():
        for case, values in rows.items():
            print(f"{name:28} {case:32} {statistics.mean(values):.3g} "
                  f"+- {statistics.stdev(values):.2g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "seeds": args.seeds, "uniformity": spread,
                       "drift": result}, f, indent=1)


if __name__ == "__main__":
    main()
