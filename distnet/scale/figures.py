"""The plan's figure (PNG, matplotlib from the ``plot`` extra): predicted samples/s against nodes for each global
batch with the ideal line, and time to the target (with a sweep) or the scaling efficiency against nodes."""

from ..plot import pyplot, save


def _by_batch(rows):
    out = {}
    for r in rows:
        out.setdefault(r["batch"], []).append(r)
    return out


def draw(out, path):
    plt = pyplot()
    rows, sweep = out["rows"], "fastest" in out
    groups = _by_batch(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("viridis")
    keys = sorted(groups)
    for i, b in enumerate(keys):
        rs = sorted(groups[b], key=lambda r: r["nodes"])
        color = cmap(i / max(len(keys) - 1, 1) * 0.9)
        left.plot([r["nodes"] for r in rs], [r["samples_per_s"] for r in rs], "o-", ms=3, color=color,
                  label=f"B = {b:,}")
        y = [r["time_s"] / 3600 for r in rs] if sweep else [100 * r["efficiency"] for r in rs]
        right.plot([r["nodes"] for r in rs], y, "o-", ms=3, color=color, label=f"B = {b:,}")
    nodes = sorted({r["nodes"] for r in rows})
    top = max(keys)
    first = min(groups[top], key=lambda r: r["nodes"])
    left.plot(nodes, [first["samples_per_s"] * n / first["nodes"] for n in nodes], color="0.3", ls="--", lw=1,
              label=f"ideal (B = {top:,})")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(nodes)
        ax.set_xticklabels([str(n) for n in nodes], rotation=45 if len(nodes) > 8 else 0)
        ax.minorticks_off()
        ax.set_xlabel(f"nodes ({out['ranks_per_node']} rank(s) each)")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("predicted samples/s")
    left.set_title("throughput")
    if sweep:
        right.set_yscale("log")
        right.set_ylabel("predicted time to target (hours)")
        fa = out["fastest"]
        right.plot([fa["nodes"]], [fa["time_s"] / 3600], "*", ms=14, color="C3", zorder=5,
                   label=f"fastest: {fa['nodes']} nodes, B = {fa['batch']:,}")
        right.set_title("time to target")
    else:
        right.axhline(100, color="0.3", ls="--", lw=1)
        right.set_ylabel("strong-scaling efficiency vs 1 rank (%)")
        right.set_title("efficiency")
    handles, labels = right.get_legend_handles_labels()
    right.legend(handles, labels, fontsize=7, ncol=2, loc="best")
    left.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(f"distnet plan {out['config']} (prediction, sync {out['sync']})")
    fig.tight_layout()
    return save(fig, path)
