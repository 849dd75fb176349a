"""Does stochastic rounding's element hash need all of fmix32? (Note [stochastic rounding],
docs/internals.md.) bf16 AdamW with stochastically rounded bf16 states, 300 steps of both drift
problems (fusedopt.bench.drift), on the reference backend, once with the element hash the
backends use (fmix32's first round) and once with the whole finaliser, over several seed sets:
the mean and standard deviation of each mode's drift from the fp32 twin.

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
    result = run(args.seeds)
    for name, rows in result.items():
        for case, values in rows.items():
            print(f"{name:28} {case:32} {statistics.mean(values):.3g} "
                  f"+- {statistics.stdev(values):.2g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "seeds": args.seeds, "drift": result}, f,
                      indent=1)


if __name__ == "__main__":
    main()
