"""The end-to-end benchmark's two PNGs, drawn from its JSON document (fusedopt/bench/e2e.py):
the loss curves with torch's spread band, beside each row's distance from the reference against
the band's width; and the time breakdown of an iteration."""


def _title(doc):
    o = doc["options"]
    return (f"{doc['model']}, {o['optimizer']} {o['precision']}, batch {o['batch']} x "
            f"{o['frames']}x{o['size']}x{o['size']}, {doc['device_name']}, "
            f"git {(doc.get('git') or {}).get('describe', '?')}")


def plot(doc, loss_path, time_path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    spread = doc.get("spread")
    ref = next((r for r in ok if r["row"] == doc.get("reference")), None)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8))
    if spread:
        xs = range(len(spread["low"]))
        ax1.fill_between(xs, spread["low"], spread["high"], color="0.6", alpha=0.5,
                         label=f"spread of {spread['vs']} (1-ulp nudges, {len(spread['runs'])} seeds)")
    for r in ok:
        ax1.plot(r["losses"], label=r["row"], lw=1)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=7)
    if ref is not None:
        floor = 1e-9       # a log axis has no zero: equal losses are drawn at this floor
        if spread:
            width = [max(h - lo, floor) for lo, h in zip(spread["low"], spread["high"])]
            ax2.fill_between(range(len(width)), floor, width, color="0.6", alpha=0.5,
                             label="band width (torch against itself)")
        for r in ok:
            if r is ref:
                continue
            ax2.plot([max(abs(a - b), floor) for a, b in zip(r["losses"], ref["losses"])],
                     label=r["row"], lw=1)
        ax2.set_yscale("log")
        ax2.set_xlabel("iteration")
        ax2.set_ylabel(f"|loss - loss of {ref['row']}|")
        ax2.legend(fontsize=7)
    fig.suptitle(_title(doc), fontsize=9)
    fig.tight_layout()
    fig.savefig(loss_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(ok) + 2.2))
    names = [r["row"] for r in ok]
    optim = [r.get("optim_ms") or 0.0 for r in ok]
    rest = [max(r["iter_ms"] - o, 0.0) for r, o in zip(ok, optim)]
    ax.barh(names, rest, label="rest of the iteration (graph, compile: all of it but the schedule)")
    ax.barh(names, optim, left=rest, label="clip + step + scheduler")
    for i, r in enumerate(ok):
        ax.text(rest[i] + optim[i], i, f" {r['iter_ms']:.2f} ms"
                + (f" ({optim[i]:.2f})" if optim[i] else ""), va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per iteration (median; CUDA events on a GPU, wall time on CPU)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.set_title(_title(doc), fontsize=9)
    fig.tight_layout()
    fig.savefig(time_path, dpi=110)
    plt.close(fig)
    return True
