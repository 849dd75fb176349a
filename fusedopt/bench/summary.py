"""One table from many fusedopt-bench runs (issue 27's sweep): a row per run with fusedopt's
fraction of the stream and its speed against the fastest correct torch implementation.

    python -m fusedopt.bench.summary bench/results/<device>/sweep/*.json     # Markdown on stdout

``bash bench/cpu_sweep.sh`` makes the runs (every optimizer x fp32/bf16/fp16 x each CPU level).
"""
import json
import sys

from fusedopt.bench.report import baseline_of, wrong


def row(doc, impl="fusedopt"):
    """The cells of one run: optimizer, dtype, CPU level, fusedopt's median, its fraction of the
    add_ stream and of the real copy_, the baseline and the ratio to it, the torch rows that
    failed their check."""
    o, d = doc["options"], doc["device"]
    rec = next((r for r in doc["results"] if r["impl"] == impl and r["status"] == "ok"), None)
    base, ratio = baseline_of(rec) if rec else (None, None)
    wrongs = [r["impl"] for r in doc["results"] if wrong(r)]

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"
    level = d.get("fusedopt_cpu_level") or d.get("cpu_capability") or "-"
    return [o["optimizer"], o["dtype"], level,
            "-" if not rec else f"{rec['median_ms']:.2f}",
            pct(rec and rec.get("roofline_frac")), pct(rec and rec.get("real_copy_frac")),
            f"{ratio:.2f}x vs {base}" if ratio else "-", ", ".join(wrongs) or "-"]


HEADER = ["optimizer", "dtype", "level", "fusedopt ms", "of stream", "of copy_",
          "vs fastest correct torch", "torch rows WRONG"]


def markdown(docs):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(row(doc)) + " |" for doc in docs]
    return "\n".join(lines)


def main(argv=None):
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m fusedopt.bench.summary RUN.json ...", file=sys.stderr)
        return 2
    docs = []
    for path in paths:
        with open(path) as f:
            docs.append(json.load(f))
    print(markdown(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
