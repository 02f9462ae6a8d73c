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
    longest = max((r["time_s"] for r in rows), default=0.0) if sweep else 0.0
    unit, per = ("s", 1.0) if longest < 120 else ("min", 60.0) if longest < 7200 else ("hours", 3600.0)
    for i, b in enumerate(keys):
        rs = sorted(groups[b], key=lambda r: r["nodes"])
        color = cmap(i / max(len(keys) - 1, 1) * 0.9)
        left.plot([r["nodes"] for r in rs], [r["samples_per_s"] for r in rs], "o-", ms=3, color=color,
                  label=f"B = {b:,}")
        y = [r["time_s"] / per for r in rs] if sweep else [100 * r["efficiency"] for r in rs]
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
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        times = [r["time_s"] / per for r in rows]
        right.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        # minor labels only within a decade: across several they crowd into each other
        right.yaxis.set_minor_formatter(FormatStrFormatter("%g") if max(times) < 10 * min(times) else NullFormatter())
        right.set_ylabel(f"predicted time to target ({unit})")
        fa = out["fastest"]
        right.plot([fa["nodes"]], [fa["time_s"] / per], "*", ms=14, color="C3", zorder=5,
                   label=f"fastest: {fa['nodes']} nodes, B = {fa['batch']:,}")
        right.set_title("time to target")
    else:
        right.axhline(100, color="0.3", ls="--", lw=1)
        right.set_ylabel("strong-scaling efficiency vs 1 rank (%)")
        right.set_title("efficiency")
    # one legend under both panels: inside either it covers curves
    handles, labels = left.get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(*right.get_legend_handles_labels()) if lab.startswith("fastest")]
    handles += [h for h, _ in extra]
    labels += [lab for _, lab in extra]
    fig.suptitle(f"distnet plan {out['config']}: a prediction ({out['ranks_per_node']} rank(s) per node, "
                 f"sync {out['sync']})")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    return save(fig, path)
