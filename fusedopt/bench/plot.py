"""Plots drawn from a fusedopt-bench JSON document (matplotlib, imported lazily).

    python -m fusedopt.bench.plot results.json out.png     # redraw a committed result

Without a sweep: step time per implementation (median, p20-p80 whiskers) and GB/s against the
measured copy bandwidth. With a sweep: both over the sweep variable, one line per implementation.
"""
import json
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
    flags = " ".join(f for f in ("clip" if o.get("clip") else "", "amp" if o.get("amp") else "") if f)
    groups = "swept" if o.get("sweep") == "groups" else o.get("groups")
    if o.get("sweep") == "numel":
        what = f"numel swept, {o['tensors']} tensors"
    return (f"{o['optimizer']} {o['dtype']} {flags} | {what} | groups={groups}\n"
            f"{d.get('name')} ({d['type']}), copy {d.get('copy_gbps') or 0:.0f} GB/s, torch "
            f"{data['torch']['version']}")


def plot(data, path):
    """Write the figure for JSON document ``data`` to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in data["results"] if r["status"] == "ok"]
    copy = data["device"].get("copy_gbps")
    sweep = data["options"].get("sweep")
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    if sweep:
        impls = list(dict.fromkeys(r["impl"] for r in ok))
        for impl in impls:
            rs = sorted((r for r in ok if r["impl"] == impl), key=lambda r: r["sweep_value"])
            xs = [r["sweep_value"] for r in rs]
            ax_t.plot(xs, [r["median_ms"] for r in rs], marker="o", label=impl)
            ax_t.fill_between(xs, [r["p20_ms"] for r in rs], [r["p80_ms"] for r in rs], alpha=0.15)
            ax_b.plot(xs, [r["gbps"] for r in rs], marker="o", label=impl)
        for ax in (ax_t, ax_b):
            ax.set_xscale("log")
            ax.set_xlabel(sweep)
            ax.grid(True, which="both", alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.legend(fontsize=8)
        # the roofline measured at each point (interleaved with that point's steps)
        line = sorted({(r["sweep_value"], r["copy_gbps"]) for r in ok if r.get("copy_gbps")})
        if line:
            ax_b.plot([v for v, _ in line], [c for _, c in line], "k--", linewidth=1,
                      label="copy bandwidth")
            ax_b.legend(fontsize=8)
            copy = None
    else:
        names = [r["impl"] for r in ok]
        x = range(len(ok))
        med = [r["median_ms"] for r in ok]
        err = [[m - r["p20_ms"] for m, r in zip(med, ok)], [r["p80_ms"] - m for m, r in zip(med, ok)]]
        ax_t.bar(x, med, yerr=err, capsize=3, color="tab:blue")
        ax_b.bar(x, [r["gbps"] for r in ok], color="tab:green")
        if med and max(med) > 20 * min(med):
            ax_t.set_yscale("log")
        for ax in (ax_t, ax_b):
            ax.set_xticks(list(x))
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        for i, r in enumerate(ok):
            if r.get("vs_torch_fused"):
                ax_t.annotate(f"{r['vs_torch_fused']:.2f}x", (i, med[i]), ha="center",
                              va="bottom", fontsize=7)
    if copy:
        ax_b.axhline(copy, color="k", linestyle="--", linewidth=1,
                     label=f"copy bandwidth {copy:.0f} GB/s")
        ax_b.legend(fontsize=8)
    ax_t.set_ylabel("step time, ms (median; p20-p80)")
    ax_b.set_ylabel(f"effective GB/s ({data['options']['bytes_per_param']} B/param)")
    fig.suptitle(title_of(data), fontsize=9)
    fig.tight_layout()
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
