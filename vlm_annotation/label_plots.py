"""The pictures beside the label metrics of evaluate_annotations.py: per-class precision-recall curves
and the confusion matrix (PNG, plus the matrix as JSON), each written atomically.

The figures come from :mod:`vlm_annotation.label_scoring` (:func:`pr_curves`, :func:`confusion_matrix`);
this module only draws them, with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

from pathlib import Path

from vlm_core.io_utils import atomic_output, write_json_atomic

PLOT_NAMES = {"pr_curves": "pr_curves.png", "confusion_matrix": "confusion_matrix.png",
              "confusion_matrix_json": "confusion_matrix.json"}


def plot_paths(folder: str | Path, stem: str) -> dict[str, Path]:
    """Where the pictures of the metrics file named ``stem`` go: ``<stem>.pr_curves.png`` ... in ``folder``
    (the stem keeps two metrics files of one folder from sharing pictures)."""
    return {key: Path(folder) / f"{stem}.{name}" for key, name in PLOT_NAMES.items()}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def draw_pr_curves(curves: dict[str, dict], path: Path, title: str) -> None:
    """One line per class: precision against recall at IoU 0.5, its AP50 in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, c in sorted(curves.items()):
        ap50 = sum(c["precision"]) / len(c["precision"]) if c["precision"] else 0.0
        ax.plot(c["recall"], c["precision"], label=f"{name} (AP50 {ap50:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        # Many classes: the legend goes outside the axes, where it hides no curve.
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.text(0.5, 0.5, "no class has true boxes", ha="center", va="center")
    _save(fig, path)


def draw_confusion(cm: dict, path: Path, title: str) -> None:
    """The counts in a grid, rows the truth, columns the prediction, the darker the more."""
    plt = _pyplot()
    names, matrix = cm["classes"], cm["matrix"]
    side = max(4.0, 0.55 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="Blues")
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize="small",
                        color="white" if v > top / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted (background: a true object missed)")
    ax.set_ylabel("truth (background: a false positive)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)


def write_label_plots(curves: dict[str, dict], cm: dict, folder: str | Path, stem: str, title: str) -> dict[str, str]:
    """The three files; returns their paths (as strings, for the metrics JSON)."""
    paths = plot_paths(folder, stem)
    Path(folder).mkdir(parents=True, exist_ok=True)
    draw_pr_curves(curves, paths["pr_curves"], f"{title}: precision-recall at IoU 0.5")
    write_json_atomic(paths["confusion_matrix_json"], cm)
    draw_confusion(cm, paths["confusion_matrix"], f"{title}: confusion matrix (IoU >= {cm['iou']:g})")
    return {key: str(p) for key, p in paths.items()}
