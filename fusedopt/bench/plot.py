"""Plots drawn from a fusedopt-bench JSON document (matplotlib, imported lazily).

    python -m fusedopt.bench.plot results.json out.png     # redraw a committed result

Without a sweep: step time per implementation (median, p20-p80 whiskers, the speed vs
torch-fused above each bar) and GB/s beside the in-place add_ stream timed in the same run. With a
sweep: both over the sweep variable, one line per implementation. A caption says what the dashed
line is, and why a bar above it is no error.
"""
import json
import math
import sys


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def title_of(data):
    o, d = data["options"], data["device"]
    what = o.get("preset") or f"{o['numel']:,} params in {o['tensors']} tensors"
    algo = " ".join([o["optimizer"], o["dtype"]] + [f for f in ("clip", "amp") if o.get(f)])
    groups = "swept" if o.get("sweep") == "groups" else o.get("groups")
    if o.get("sweep") == "numel":
        what = f"numel swept, {o['tensors']} tensors"
    return (f"{algo} | {what} | groups={groups}\n"
            f"{d.get('name')} ({d['type']}), torch {data['torch']['version']}")


STREAM = "in-place add_ stream"


def caption(data):
    """What the dashed line is and, when a bar or point rises above it, why that is no error."""
    ok = [r for r in data["results"] if r["status"] == "ok"]
    above = [r for r in ok if (r.get("roofline_frac") or 0) > 1]
    where = ("timed at each point alongside its steps" if data["options"].get("sweep")
             else "timed alongside the steps")
    text = (f"Dashed: torch's {STREAM} (read a, b; write a: 12 B/element), {where}. "
            "GB/s = the bytes the algorithm must move / median step time.")
    if above:
        best = max(above, key=lambda r: r["roofline_frac"])
        names = ", ".join(dict.fromkeys(r["impl"] for r in above))
        verb = "rises" if len(set(r["impl"] for r in above)) == 1 else "rise"
        text += (f"\n{names} {verb} above it (up to {100 * best['roofline_frac']:.0f}%): the "
                 "line is one access pattern measured in this run, a reference and not the "
                 "memory's limit; above it, a step moved its bytes faster than that add_ did.")
    return text


def figure(data):
    """The matplotlib figure for JSON document ``data``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in data["results"] if r["status"] == "ok"]
    copy = data["device"].get("copy_gbps")
    sweep = data["options"].get("sweep")
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5.6))
    if sweep == "host":
        _host(ax_t, ax_b, ok)
        fig.suptitle(title_of(data), fontsize=9)
        fig.text(0.01, 0.01, "Host time of one step: N tensors of 64 elements, one group each; "
                 "median step (host clock), and each tensor's cost above one, "
                 "(t(N) - t(1)) / (N - 1).", fontsize=8, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return fig
    if sweep:
        impls = list(dict.fromkeys(r["impl"] for r in ok))
        for impl in impls:
            rs = sorted((r for r in ok if r["impl"] == impl), key=lambda r: r["sweep_value"])
            xs = [r["sweep_value"] for r in rs]
            ax_t.plot(xs, [r["median_ms"] for r in rs], marker="o", label=_label(rs[0]))
            ax_t.fill_between(xs, [r["p20_ms"] for r in rs], [r["p80_ms"] for r in rs], alpha=0.15)
            ax_b.plot(xs, [r["gbps"] for r in rs], marker="o", label=impl)
        for ax in (ax_t, ax_b):
            ax.set_xscale("log")
            ax.set_xlabel(sweep)
            ax.grid(True, which="both", alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.legend(fontsize=8)
        # each point's own stream, the one its "vs stream" used
        line = sorted({(r["sweep_value"], r["copy_gbps"]) for r in ok if r.get("copy_gbps")})
        if line:
            ax_b.plot([v for v, _ in line], [c for _, c in line], "k--", linewidth=1,
                      label=f"{STREAM} (each point's)")
            copy = None
        ax_b.legend(fontsize=8)
    else:
        _bars(ax_t, ax_b, ok)
    if copy:
        ax_b.axhline(copy, color="k", linestyle="--", linewidth=1,
                     label=f"{STREAM}, {copy:.0f} GB/s")
        # room above the line and the bars for the legend
        ax_b.set_ylim(0, 1.2 * max([copy] + [r["gbps"] for r in ok]))
        ax_b.legend(fontsize=8, loc="upper right")
    ax_t.set_ylabel("step time, ms (median; p20-p80)")
    ax_b.set_ylabel(f"effective GB/s ({data['options']['bytes_per_param']} B/param)")
    fig.suptitle(title_of(data), fontsize=9)
    fig.text(0.01, 0.01, caption(data), fontsize=8, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


def _bars(ax_t, ax_b, ok):
    names = [_label(r) for r in ok]
    x = range(len(ok))
    med = [r["median_ms"] for r in ok]
    top = [r["p80_ms"] for r in ok]
    err = [[m - r["p20_ms"] for m, r in zip(med, ok)], [t - m for m, t in zip(med, top)]]
    wrong = ["tab:red" if _wrong(r) else None for r in ok]
    ax_t.bar(x, med, yerr=err, capsize=3, color=[w or "tab:blue" for w in wrong])
    ax_b.bar(x, [r["gbps"] for r in ok], color=[w or "tab:green" for w in wrong])
    log = bool(med) and max(med) > 20 * min(med)
    if log:
        ax_t.set_yscale("log")
    for ax in (ax_t, ax_b):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    # the ratio above the p80 whisker's cap, not on the bar's top where the whisker runs
    for i, r in enumerate(ok):
        base, ratio = _baseline(r)
        if ratio:
            ax_t.annotate(f"{ratio:.2f}x\nvs {base}", (i, top[i]),
                          xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                          fontsize=7)
    if top:   # headroom for the two-line labels (about 25 pt of a 300 pt tall axis)
        low, high = ax_t.get_ylim()
        ax_t.set_ylim(low, high * 10 ** (0.15 * math.log10(high / low)) if log else high * 1.18)


def _baseline(r):
    """(baseline, ratio): the fastest correct torch implementation (Note [checked baselines]);
    torch-fused in results written before the check."""
    if "baseline" in r:
        return r["baseline"], r["vs_baseline"]
    return "torch-fused", r.get("vs_torch_fused")


def _wrong(r):
    return (r.get("check") or {}).get("verdict") == "wrong"


def _label(r):
    return r["impl"] + (" WRONG" if _wrong(r) else "")


def _host(ax_t, ax_b, ok):
    for impl in dict.fromkeys(r["impl"] for r in ok):
        rs = sorted((r for r in ok if r["impl"] == impl), key=lambda r: r["sweep_value"])
        ax_t.plot([r["sweep_value"] for r in rs], [r["median_ms"] * 1e3 for r in rs], marker="o",
                  label=_label(rs[0]))
        per = [r for r in rs if r.get("ns_per_tensor") is not None]
        ax_b.plot([r["sweep_value"] for r in per], [r["ns_per_tensor"] for r in per], marker="o",
                  label=_label(rs[0]))
    for ax in (ax_t, ax_b):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tensors (one group each)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_ylabel("host time of a step, µs (median)")
    ax_b.set_ylabel("ns per tensor above one")


def plot(data, path):
    """Write the figure for JSON document ``data`` to ``path``."""
    import matplotlib.pyplot as plt
    fig = figure(data)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m fusedopt.bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        plot(json.load(f), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
