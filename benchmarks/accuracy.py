"""Accuracy benchmark: recipes x seeds (split and initialisation) on all of UTKFace, as Markdown tables.

    python benchmarks/accuracy.py --data_dir ../shared/data/UTKFace.tar.gz \
        --backbone_weights ../shared/weights/vgg16_features_imagenet.pth --seeds 42 0 1 --out results/accuracy.md

Each (recipe, seed) is a normal training run of ``project/lit_classifier_main.py --recipe R --seed S`` (so the numbers
are exactly what a user gets); per recipe the table reports mean ± std over seeds of test accuracy, macro-F1,
balanced accuracy, per-group recall, within-one-group accuracy, test loss, epochs, wall time and, for recipes that
calibrate, the expected calibration error (15 bins) and the fitted temperature, for recipes that learn ages the
errors in years (MAE, median absolute error, CS(5), mean signed error, MAE per group) and the interval's coverage and
width, plus the confusion matrix of the first seed and the slice table (gender, ethnicity, age band; mean over
seeds, worst accuracy first); with several recipes, a per-seed comparison of each against the first follows.
Finished runs in ``--work_dir/RECIPE/seed_S`` are reused. Extra arguments after ``--`` go to every training command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.config.recipes import RECIPES  # noqa: E402
from project.core.age_groups import GROUP_LABELS  # noqa: E402


def derived_metrics(run: Dict) -> Dict[str, float]:
    """Metrics computed from a run's confusion matrix (rows = true group, columns = predicted)."""
    confusion = run["confusion_matrix"]
    total = sum(map(sum, confusion))
    recalls = [row[i] / sum(row) if sum(row) else float("nan") for i, row in enumerate(confusion)]
    present = [r for r in recalls if r == r]
    within_one = sum(confusion[i][j] for i in range(len(confusion)) for j in range(len(confusion)) if abs(i - j) <= 1)
    metrics = {
        "accuracy": run["test_acc"],
        "macro_f1": run["test_f1"],
        "balanced_accuracy": sum(present) / len(present),
        "within_one_group": within_one / total,
        "test_loss": run["test_loss"],
        "epochs": run["epochs_trained"],
        "wall_time_min": run["wall_time_s"] / 60,
        **{f"recall {label}": value for label, value in zip(GROUP_LABELS, recalls)},
    }
    if "test_calibration_error" in run:  # runs from before calibration have neither
        metrics["calibration_error"] = run["test_calibration_error"]
        metrics["temperature"] = run["temperature"]
    ages = run.get("ages")  # models with per-year outputs, from the release that reports ages on
    if ages:
        metrics.update({"MAE (years)": ages["mae"], "median absolute error (years)": ages["median_absolute_error"],
                        "CS(5)": ages["cs5"], "mean signed error (years)": ages["mean_signed_error"]})
        if "interval_coverage" in ages:
            metrics[f"interval coverage ({ages['level']:.0%})"] = ages["interval_coverage"]
            metrics["interval width (years)"] = ages["interval_width"]
        metrics.update({f"MAE {label} (years)": value for label, value in ages["mae_by_group"].items()
                        if value is not None})
        metrics.update(mae_of_ages(ages.get("by_age") or {}))
    metrics.update(worst_slices(run.get("slices") or []))
    return metrics


#: Ages whose errors people notice most (young children predicted too old, the oldest too young): inclusive bounds
AGE_RANGES = {"0-12": (0, 12), "80+": (80, 200)}


def mae_of_ages(by_age: Dict[str, Dict]) -> Dict[str, float]:
    """MAE over the test faces of each of :data:`AGE_RANGES`, from the per-year errors (count-weighted)."""
    result = {}
    for name, (low, high) in AGE_RANGES.items():
        rows = [row for age, row in by_age.items() if low <= int(age) <= high and row["count"]]
        if rows:
            result[f"MAE ages {name} (years)"] = (sum(row["mae"] * row["count"] for row in rows)
                                                  / sum(row["count"] for row in rows))
    return result


def worst_slices(slices: List[Dict]) -> Dict[str, float]:
    """The lowest group accuracy among the genders and among the ethnicities."""
    result = {}
    for kind in ("gender", "ethnicity"):
        accuracies = [row["accuracy"] for row in slices if row["slice"] == kind and row.get("accuracy") is not None]
        if accuracies:
            result[f"accuracy of the worst {kind}"] = min(accuracies)
    return result


#: Metrics shown as percentages (the rest as plain numbers).
PERCENT = ("accuracy", "macro_f1", "balanced_accuracy", "within_one_group", "recall", "calibration_error", "CS(5)",
           "interval coverage")  # also "accuracy of the worst ..." (startswith "accuracy")


def slice_table(runs: List[Dict]) -> str:
    """The slices of every seed, averaged (count: per seed), worst accuracy first."""
    by_slice: Dict = {}
    for run in runs:
        for row in run.get("slices") or []:
            by_slice.setdefault((row["slice"], row["value"]), []).append(row)
    if not by_slice:
        return ""

    def mean(rows, key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.mean(values) if values else None

    def cell(value, style):
        if value is None:
            return "-"
        return {"percent": f"{100 * value:.1f} %", "years": f"{value:.1f}", "signed": f"{value:+.1f}"}[style]

    rows = sorted(by_slice.items(), key=lambda entry: mean(entry[1], "accuracy"))
    lines = [f"Slices, mean of {len(runs)} seeds, worst accuracy first:", "",
             "| slice | faces per seed | accuracy | balanced acc. | MAE (years) | mean signed error (years) | "
             "interval coverage |", "|---|---|---|---|---|---|---|"]
    for (name, value), entries in rows:
        lines.append(f"| {name}: {value} | {mean(entries, 'count'):.0f} | {cell(mean(entries, 'accuracy'), 'percent')} "
                     f"| {cell(mean(entries, 'balanced_accuracy'), 'percent')} | {cell(mean(entries, 'mae'), 'years')} "
                     f"| {cell(mean(entries, 'mean_signed_error'), 'signed')} "
                     f"| {cell(mean(entries, 'interval_coverage'), 'percent')} |")
    return "\n".join(lines) + "\n"


def run_seed(recipe: str, seed: int, args, passthrough: List[str]) -> Dict:
    """Train + test ``recipe`` with ``seed`` (or reuse a finished run of the same pair in ``--work_dir``)."""
    root = Path(args.work_dir) / recipe / f"seed_{seed}"
    finished = sorted(root.glob("lightning_logs/version_*/test_metrics.json"))
    if not finished or args.rerun:
        command = [sys.executable, str(REPO / "project" / "lit_classifier_main.py"), "--data_dir", args.data_dir,
                   "--backbone_weights", args.backbone_weights, "--seed", str(seed), "--default_root_dir", str(root),
                   "--recipe", recipe, *passthrough]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        finished = sorted(root.glob("lightning_logs/version_*/test_metrics.json"))
    return json.loads(finished[-1].read_text())


def markdown(name: str, runs: List[Dict], seeds: List[int]) -> str:
    """mean ± std per metric over seeds, and the first seed's confusion matrix."""
    per_seed = [derived_metrics(run) for run in runs]
    lines = [f"### Recipe `{name}`: {len(runs)} seeds ({', '.join(map(str, seeds))}), "
             f"{runs[0]['test_images']} test images each", "", "| metric | mean ± std | per seed |", "|---|---|---|"]
    for key in [key for key in per_seed[0] if all(key in m for m in per_seed)]:
        values = [m[key] for m in per_seed]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        percent = key.startswith(PERCENT)
        fmt = (lambda v: f"{100 * v:.1f} %") if percent else (lambda v: f"{v:.2f}")
        lines.append(f"| {key} | {fmt(statistics.mean(values))} ± {fmt(spread).replace(' %', '')} | "
                     f"{' / '.join(fmt(v) for v in values)} |")
    lines += ["", f"Confusion matrix, seed {seeds[0]} (rows true, columns predicted):", "",
              "| true \\ pred | " + " | ".join(GROUP_LABELS) + " |", "|---" * (len(GROUP_LABELS) + 1) + "|"]
    for label, row in zip(GROUP_LABELS, runs[0]["confusion_matrix"]):
        lines.append(f"| {label} | " + " | ".join(map(str, row)) + " |")
    slices = slice_table(runs)
    return "\n".join(lines) + "\n" + ("\n" + slices if slices else "")


def comparison(names: List[str], results: Dict[str, List[Dict]], seeds: List[int]) -> str:
    """Per seed: each recipe's test accuracy and macro-F1 next to the first recipe's."""
    base = names[0]
    lines = [f"### Per seed, against `{base}`", "",
             "| seed | " + " | ".join(f"`{name}` acc / F1" for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for index, seed in enumerate(seeds):
        cells = [f"{100 * results[n][index]['test_acc']:.1f} % / {results[n][index]['test_f1']:.3f}" for n in names]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    for name in names[1:]:
        wins = sum(results[name][i]["test_acc"] > results[base][i]["test_acc"] for i in range(len(seeds)))
        lines += ["", f"`{name}` beats `{base}` in test accuracy on {wins} of {len(seeds)} seeds."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--backbone_weights", default="imagenet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--recipes", nargs="+", default=["notebook", "default"], choices=list(RECIPES),
                        help="recipes to run; the first is the reference the others are compared with")
    parser.add_argument("--work_dir", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--rerun", action="store_true", help="train again even if a seed has a finished run")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args(own)
    results = {recipe: [run_seed(recipe, seed, args, passthrough) for seed in args.seeds] for recipe in args.recipes}
    table = "\n".join(markdown(recipe, runs, args.seeds) for recipe, runs in results.items())
    if len(results) > 1:
        table += "\n" + comparison(args.recipes, results, args.seeds)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
