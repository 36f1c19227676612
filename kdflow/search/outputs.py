"""What the search writes: selection/ranking.md (the table), ranking.json (the numbers) and
ranking.png (the plot), to commit with the recipe it chose."""

from __future__ import annotations

import json
from pathlib import Path

from kdflow.core.paths import SELECTION_DIR
from kdflow.search.grid import label
from kdflow.search.ranking import Experiment, table


def settings_label(settings: list[dict]) -> str:
    """The baseline settings chosen first, in words."""
    names = [f"`{label(s) or 'the workspace'}`" for s in settings]
    if len(names) == 1:
        return f"{names[0]}, whose scratch students are the best on validation"
    return f"{', '.join(names[:-1])} and {names[-1]}, whose scratch students are tied on validation (within the noise)"


def write_outputs(results: list[tuple[dict, Experiment]], order: list[Experiment], settings: list[dict] | None = None,
                  directory: Path = SELECTION_DIR) -> None:
    """ranking.md (the table), ranking.json (the numbers) and ranking.png (the plot), in ``order``;
    ``settings``: the baseline settings chosen first on the scratch students (kdflow.search.ranking.choose)."""
    directory.mkdir(parents=True, exist_ok=True)
    recipe_of = {id(e): r for r, e in results}
    rows = []
    for e in order:
        gain = e.val_gain("distilled", "scratch")
        rows.append({"experiment": e.name, "recipe": recipe_of[id(e)], "val_kd_gain": gain,
                     "val_distilled": round(e.val_mean("distilled"), 6), "val_scratch": round(e.val_mean("scratch"), 6),
                     "test_kd_gain_not_used": e.test_kd_gain})
    (directory / "ranking.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    first = "" if settings is None else (
        f"First the settings {settings_label(settings)}; their recipes come first, the other settings' after "
        "them.\n\n")
    (directory / "ranking.md").write_text(
        "# Recipe search: ranked by the mean paired validation KD gain\n\n" + first
        + table(order, ordered=True) + "\n\nThe first row is the choice (`dvc exp apply`).\n")
    _plot(rows, directory / "ranking.png", settings)


def _plot(rows: list[dict], path: Path, settings: list[dict] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * len(rows)))
    y = list(range(len(rows)))[::-1]
    for yi, row in zip(y, rows):
        gain = row["val_kd_gain"]
        low, high = gain["ci95_low"], gain["ci95_high"]
        xerr = None if low is None else [[(gain["mean"] - low) * 100], [(high - gain["mean"]) * 100]]
        ax.errorbar(gain["mean"] * 100, yi, xerr=xerr, fmt="o", color="tab:blue", capsize=4,
                    label="validation (ranks)" if yi == y[0] else None)
        if row["test_kd_gain_not_used"]:
            ax.plot(row["test_kd_gain_not_used"]["mean"] * 100, yi, "x", color="grey",
                    label="test (not used)" if yi == y[0] else None)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [label(r["recipe"]) for r in rows], fontsize="small")
    title = "Recipe search on validation, best first"
    if settings is not None:
        chosen = " or ".join(label(s) or "the workspace" for s in settings)
        title += f"\n{chosen} chosen first, on the scratch students"
    ax.set(xlabel="paired KD gain, points of accuracy (distilled − scratch), 95% CI", title=title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
