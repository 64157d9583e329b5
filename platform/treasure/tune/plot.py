"""The search's picture: the objective against each searched rate, one panel per search key (PNG).

Rows are finished trials as flat dicts (``{"dropout.dataset_rate": 0.5, ..., "objective": 0.3}``).
Numeric keys get a scatter panel (x: the key, y: the objective); when both dropout rates were
searched the first panel is the (dataset rate, sample rate) plane coloured by the objective, the
view the paper's ablation argues from. Trials stopped early (objective NaN: never evaluated in
full) appear as grey crosses in that plane and are counted in the other panels' legends.
"""

from __future__ import annotations

import math
from pathlib import Path

PLANE = ("dropout.dataset_rate", "dropout.sample_rate")


def numeric_keys(rows: list[dict], keys: list[str]) -> list[str]:
    """The search keys whose sampled values are all numbers (choice over strings cannot be a scatter axis)."""
    out = []
    for k in keys:
        values = [r.get(k) for r in rows]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out.append(k)
    return out


def plot_objective(rows: list[dict], keys: list[str], path: str | Path, *, title: str = "objective vs dropout rates") -> Path:
    """Write the PNG to `path` and return it; raises if no key is numeric."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in Ray workers
    import matplotlib.pyplot as plt

    axes_keys = numeric_keys(rows, keys)
    if not axes_keys:
        raise ValueError(f"no numeric search key to plot among {keys}")
    plane = all(k in axes_keys for k in PLANE)
    n = len(axes_keys) + (1 if plane else 0)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    axes = list(axes[0])
    done = [r for r in rows if not math.isnan(r.get("objective", math.nan))]
    stopped = [r for r in rows if math.isnan(r.get("objective", math.nan))]
    if plane:
        ax = axes.pop(0)
        sc = ax.scatter([r[PLANE[0]] for r in done], [r[PLANE[1]] for r in done],
                        c=[r["objective"] for r in done], cmap="viridis", s=70, edgecolors="k")
        ax.scatter([r[PLANE[0]] for r in stopped], [r[PLANE[1]] for r in stopped], marker="x", c="grey", s=50,
                   label="stopped early")
        fig.colorbar(sc, ax=ax, label="objective")
        ax.set_xlabel(PLANE[0])
        ax.set_ylabel(PLANE[1])
        if stopped:
            ax.legend(fontsize=7)
    for ax, key in zip(axes, axes_keys):
        ax.scatter([r[key] for r in done], [r["objective"] for r in done], s=50, edgecolors="k", label="finished")
        ax.set_xlabel(key)
        ax.set_ylabel("objective (higher is better)")
        ax.grid(alpha=0.3)
        if stopped:
            ax.legend(fontsize=7, title=f"{len(stopped)} stopped early (not shown)", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
