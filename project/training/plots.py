"""Figures for a training run, written as small PNGs into ``<run folder>/plots/``.

Uses matplotlib's object API (``Figure`` + Agg) instead of ``pyplot``: no global backend switch, no open-figure
state, safe to call from inside a training process on a machine without a display.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from project.core.age_groups import (
    GROUP_BOUNDARIES,
    GROUP_LABELS,
    GROUP_RANGES,
    MAX_AGE,
    NUM_CLASSES,
)
from project.core.transforms import load_rgb_image
from project.inference.predictor import AgeGroupPredictor
from project.models.checkpoint import TrainedNet

log = logging.getLogger(__name__)

DPI = 100
SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}
RIGHT_COLOR, WRONG_COLOR = "#1a7f37", "#cf222e"
#: side of the thumbnails in the prediction grid: enough to see a face, keeps the PNG small
THUMBNAIL_SIDE = 128

PathLike = Union[str, Path]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _label(group: Union[int, str]) -> str:
    return GROUP_LABELS[group] if isinstance(group, (int, np.integer)) else str(group)


# ------------------------------------------------------------------------------------------ age distribution


def plot_age_distribution(ages: Sequence[int], class_counts: Mapping[str, Sequence[int]], path: PathLike) -> Path:
    """Histogram of ages (1-year bins) with the group boundaries, and images per group in each split."""
    ages = np.asarray(ages, dtype=int)
    figure = _new_figure(12, 4.5)
    histogram, bars = figure.subplots(1, 2, width_ratios=[1.5, 1])

    histogram.hist(ages, bins=np.arange(-0.5, MAX_AGE + 1.5), color="#4C72B0")
    top = histogram.get_ylim()[1] * 1.22  # headroom for the group labels
    histogram.set_ylim(0, top)
    for boundary in GROUP_BOUNDARIES:
        histogram.axvline(boundary - 0.5, color="black", linestyle="--", linewidth=1)
    for group, (low, high) in enumerate(GROUP_RANGES):
        count = int(((ages >= low) & (ages <= high)).sum())
        histogram.text((low + high) / 2, top * 0.97, f"{GROUP_LABELS[group]}\nn={count}", ha="center", va="top",
                       fontsize=9)
    histogram.set(xlim=(-1, MAX_AGE + 1), xlabel="age (years)", ylabel="images",
                  title=f"Age distribution ({len(ages)} images, 1-year bins)")

    splits = [name for name in ("train", "val", "test") if name in class_counts]
    width = 0.8 / max(1, len(splits))
    positions = np.arange(NUM_CLASSES)
    for k, name in enumerate(splits):
        counts = list(class_counts[name])
        drawn = bars.bar(positions + (k - (len(splits) - 1) / 2) * width, counts, width, label=f"{name} "
                         f"({sum(counts)})", color=SPLIT_COLORS.get(name))
        bars.bar_label(drawn, fontsize=7, padding=1, rotation=90)
    bars.set_ylim(0, bars.get_ylim()[1] * 1.15)  # room for the rotated count labels
    bars.set(xticks=positions, xticklabels=GROUP_LABELS, xlabel="age group", ylabel="images",
             title="Images per age group and split")
    bars.legend(fontsize=8)
    return _save(figure, path)


# -------------------------------------------------------------------------------------------- training curves


def read_epoch_metrics(metrics_csv: PathLike) -> Dict[str, Dict[int, float]]:
    """``{column: {epoch: value}}`` from a CSVLogger ``metrics.csv``.

    Lightning writes train and val metrics of one epoch on separate rows (and test metrics on another), each with
    the other columns empty; values are averaged per epoch, ignoring empty cells and NaN.
    """
    collected: Dict[str, Dict[int, List[float]]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for column, text in row.items():
                if column in ("epoch", "step") or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    collected.setdefault(column, {}).setdefault(epoch, []).append(value)
    return {column: {epoch: float(np.mean(v)) for epoch, v in sorted(by_epoch.items())}
            for column, by_epoch in collected.items()}


def plot_training_curves(metrics_csv: PathLike, path: PathLike) -> Path:
    """Loss, accuracy and macro-F1 per epoch, train vs val, with the best val_acc epoch marked."""
    metrics = read_epoch_metrics(metrics_csv)
    titles = {"loss": "Loss (cross-entropy)", "acc": "Accuracy", "f1": "Macro F1"}
    panels = [(name, title) for name, title in titles.items()
              if f"train_{name}" in metrics or f"val_{name}" in metrics]
    if not panels:
        raise ValueError(f"{metrics_csv} holds no train_/val_ loss, acc or f1 columns")
    figure = _new_figure(4.2 * len(panels), 4.0)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    epochs = sorted({epoch for series in metrics.values() for epoch in series})
    best_epoch = _best_epoch(metrics.get("val_acc", {}))
    for ax, (name, title) in zip(axes, panels):
        for split in ("train", "val"):
            series = metrics.get(f"{split}_{name}", {})
            if series:
                ax.plot(list(series), list(series.values()), marker="o", markersize=4, label=split,
                        color=SPLIT_COLORS[split])
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best val_acc (epoch {best_epoch})")
        # half an epoch of margin: a run of one epoch still gets a sensible axis instead of -0.04..0.04
        ax.set(xlabel="epoch", title=title, xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        if name != "loss":
            ax.set_ylim(-0.02, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    # one legend for all panels, outside the axes, so it never hides a curve
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    return _save(figure, path)


def _best_epoch(val_acc: Mapping[int, float]) -> Optional[int]:
    return max(val_acc, key=val_acc.get) if val_acc else None


# ------------------------------------------------------------------------------------------ confusion matrix


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], path: PathLike) -> Path:
    """Counts and row-normalised confusion matrix (rows = true group) side by side, and recall per group."""
    counts = np.asarray(confusion, dtype=np.int64)
    support = counts.sum(axis=1)
    normalised = counts / np.maximum(support, 1)[:, None]
    recall = np.diag(normalised)
    accuracy = np.trace(counts) / max(1, counts.sum())

    figure = _new_figure(14, 4.6)
    count_ax, norm_ax, recall_ax = figure.subplots(1, 3, width_ratios=[1, 1, 0.8])
    _heatmap(count_ax, counts, counts / max(1, counts.max()), "{:d}", f"Counts ({counts.sum()} test images)")
    _heatmap(norm_ax, normalised, normalised, "{:.2f}", f"Row-normalised (accuracy {accuracy:.3f})")

    positions = np.arange(len(recall))
    recall_ax.barh(positions, recall, color="#4C72B0")
    for y, (value, n) in enumerate(zip(recall, support)):
        recall_ax.text(value + 0.02, y, f"{value:.2f}  (n={n})" if n else "no images", va="center", fontsize=9)
    recall_ax.set(xlim=(0, 1.45), yticks=positions, yticklabels=GROUP_LABELS[:len(recall)], xlabel="recall",
                  title=f"Recall per group (mean {recall[support > 0].mean() if support.any() else 0:.3f})")
    recall_ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    recall_ax.invert_yaxis()  # same top-to-bottom order as the matrix rows
    return _save(figure, path)


def _heatmap(ax, values: np.ndarray, shade: np.ndarray, fmt: str, title: str) -> None:
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=10,
                color="white" if shade[row, col] > 0.55 else "black")  # stay readable on dark cells
    ticks = np.arange(values.shape[0])
    labels = GROUP_LABELS[:values.shape[0]]
    ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, xlabel="predicted age group",
           ylabel="true age group", title=title)


# -------------------------------------------------------------------------------------------- prediction grid


def plot_prediction_grid(images: Sequence, true_groups: Sequence[Union[int, str]],
                         pred_groups: Sequence[Union[int, str]], confidences: Sequence[float], path: PathLike,
                         columns: int = 4) -> Path:
    """Images with ``true X / pred Y (p)`` titles: green when right, red when wrong."""
    if not len(images):
        raise ValueError("no images to plot")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    figure = _new_figure(2.4 * columns, 2.6 * rows + 0.3)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    wrong = 0
    for ax, image, true, pred, confidence in zip(axes, images, true_groups, pred_groups, confidences):
        thumbnail = load_rgb_image(image)
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
        right = _label(true) == _label(pred)
        wrong += not right
        ax.imshow(np.asarray(thumbnail))
        ax.set_title(f"true {_label(true)}\npred {_label(pred)} ({confidence:.2f})", fontsize=9,
                     color=RIGHT_COLOR if right else WRONG_COLOR)
    for ax in axes:
        ax.axis("off")
    figure.suptitle(f"Test images: {len(images) - wrong} right (green), {wrong} wrong (red)", fontsize=11)
    return _save(figure, path)


def choose_examples(correct: Sequence[bool], count: int) -> List[int]:
    """Indices of up to ``count`` examples: up to half of them wrong (mistakes first), the rest right."""
    wrong = [i for i, ok in enumerate(correct) if not ok]
    right = [i for i, ok in enumerate(correct) if ok]
    chosen = wrong[:count // 2] + right[:count - min(len(wrong), count // 2)]
    chosen += [i for i in wrong if i not in chosen][:count - len(chosen)]  # too few right ones: more mistakes
    return chosen


def plot_test_predictions(datamodule, model: TrainedNet, path: PathLike, max_grid: int = 16, seed: int = 0,
                          batch_size: int = 16) -> Path:
    """Predict a seeded sample of test images from their files (as ``predict.py`` would) and plot a grid."""
    items = datamodule.split_items("test")
    rng = np.random.default_rng(seed)
    # Twice the grid is enough to find some mistakes without running the whole test set through VGG16 again.
    sample = [items[i] for i in rng.permutation(len(items))[:2 * max_grid]]
    predictions = AgeGroupPredictor(model).predict([Path(datamodule.root) / item.relpath for item in sample],
                                                   batch_size=batch_size, face_detector=None)  # chips already
    usable = [(item, p) for item, p in zip(sample, predictions) if p.ok]
    chosen = [usable[i] for i in choose_examples([p.group_index == item.group for item, p in usable], max_grid)]
    return plot_prediction_grid([Path(datamodule.root) / item.relpath for item, _ in chosen],
                                [item.group for item, _ in chosen], [p.group_index for _, p in chosen],
                                [p.confidence for _, p in chosen], path)


# ------------------------------------------------------------------------------------------- where it is wrong


def plot_age_errors(by_age: Optional[Mapping[str, Mapping[str, float]]], slices: Sequence[Mapping],
                    accuracy: Optional[float], path: PathLike) -> Path:
    """Error by true age (MAE and mean signed error per year of age; models with ages only) and accuracy per
    slice (gender, ethnicity, age band) against the overall accuracy."""
    panels = 2 if by_age else 1
    figure = _new_figure(7 * panels, 0.28 * len(slices) + 1.8)
    axes = np.atleast_1d(figure.subplots(1, panels))
    if by_age:
        ages = sorted(int(age) for age in by_age)
        error = axes[0]
        error.plot(ages, [by_age[str(a)]["mae"] for a in ages], color="#4C72B0", label="mean absolute error")
        error.plot(ages, [by_age[str(a)]["mean_signed_error"] for a in ages], color="#DD8452",
                   label="mean signed error (+ = predicted too old)")
        error.axhline(0, color="black", linewidth=0.8)
        for boundary in GROUP_BOUNDARIES:
            error.axvline(boundary - 0.5, color="grey", linestyle=":", linewidth=1)
        error.set(xlabel="true age (years)", ylabel="years", title="Error by true age (test faces)",
                  xlim=(-1, MAX_AGE + 1))
        error.grid(alpha=0.3)
        error.legend(fontsize=8)
    bars = axes[-1]
    labels = [f"{row['slice']}: {row['value']} (n={row['count']})" for row in slices]
    positions = np.arange(len(slices))
    colours = {"gender": "#4C72B0", "ethnicity": "#55A868", "age band": "#DD8452"}
    bars.barh(positions, [row["accuracy"] for row in slices], color=[colours.get(row["slice"]) for row in slices])
    if accuracy is not None:
        bars.axvline(accuracy, color="black", linestyle="--", linewidth=1, label=f"overall {accuracy:.3f}")
        bars.legend(fontsize=8, loc="lower right")
    bars.set(yticks=positions, yticklabels=labels, xlim=(0, 1), xlabel="accuracy (age group)",
             title="Accuracy per slice")
    bars.tick_params(axis="y", labelsize=8)
    bars.invert_yaxis()
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- whole run


def write_run_plots(run_dir: PathLike, datamodule, model: TrainedNet, test_metrics: Optional[Mapping],
                    max_grid: int = 16) -> List[Path]:
    """Write all plots of a finished run into ``run_dir/plots/`` and return their paths.

    ``datamodule`` must be set up (its scan and split are used); ``model`` is the trained network with its
    temperature, used where it is (CPU or GPU) for the prediction grid; ``test_metrics`` is the
    ``test_metrics.json`` payload.
    A plot whose input is missing (no metrics.csv, no confusion matrix) or that fails is skipped with a warning,
    so plotting never costs a finished run.
    """
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    metrics_csv = run_dir / "metrics.csv"
    metrics = test_metrics or {}
    confusion = metrics.get("confusion_matrix")
    steps: Dict[str, Callable[[Path], Path]] = {
        "age_distribution.png": lambda p: plot_age_distribution(
            [item.age for item in datamodule.scan.items], datamodule.class_counts(), p),
        "training_curves.png": (lambda p: plot_training_curves(metrics_csv, p)) if metrics_csv.is_file() else None,
        "confusion_matrix.png": (lambda p: plot_confusion_matrix(confusion, p)) if confusion else None,
        "test_predictions.png": lambda p: plot_test_predictions(datamodule, model, p, max_grid),
        "age_errors.png": (lambda p: plot_age_errors((metrics.get("ages") or {}).get("by_age"), metrics["slices"],
                                                     metrics.get("test_acc"), p)) if metrics.get("slices") else None,
    }
    written = []
    for name, make in steps.items():
        if make is None:
            log.warning("plots: skipped %s (its input is missing from %s)", name, run_dir)
            continue
        try:
            written.append(make(out / name))
        except Exception as err:  # a figure is a bonus: never let it fail a finished run
            log.warning("plots: could not write %s (%s: %s)", name, type(err).__name__, err)
    return written
