"""Accuracy benchmark: one recipe, several seeds (split and initialisation), all of UTKFace, one Markdown table.

    python benchmarks/accuracy.py --data_dir ../shared/data/UTKFace.tar.gz \
        --backbone_weights ../shared/weights/vgg16_features_imagenet.pth --seeds 0 1 2 --out results/notebook.md

Each seed is a normal training run of ``project/lit_classifier_main.py`` (so the numbers are exactly what a user
gets); the table reports mean ± std over seeds of test accuracy, macro-F1, balanced accuracy, per-group recall,
within-one-group accuracy, test loss, epochs to early stop and wall time, plus the confusion matrix of the first seed.
Extra arguments after ``--`` go to the training command unchanged.
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

from project.age_groups import GROUP_LABELS  # noqa: E402


def derived_metrics(run: Dict) -> Dict[str, float]:
    """Metrics computed from a run's confusion matrix (rows = true group, columns = predicted)."""
    confusion = run["confusion_matrix"]
    total = sum(map(sum, confusion))
    recalls = [row[i] / sum(row) if sum(row) else float("nan") for i, row in enumerate(confusion)]
    present = [r for r in recalls if r == r]
    within_one = sum(confusion[i][j] for i in range(len(confusion)) for j in range(len(confusion)) if abs(i - j) <= 1)
    return {
        "accuracy": run["test_acc"],
        "macro_f1": run["test_f1"],
        "balanced_accuracy": sum(present) / len(present),
        "within_one_group": within_one / total,
        "test_loss": run["test_loss"],
        "epochs": run["epochs_trained"],
        "wall_time_min": run["wall_time_s"] / 60,
        **{f"recall {label}": value for label, value in zip(GROUP_LABELS, recalls)},
    }


def run_seed(seed: int, args, passthrough: List[str]) -> Dict:
    """Train + test with ``seed`` (or reuse a finished run of the same seed in ``--work_dir``)."""
    root = Path(args.work_dir) / f"seed_{seed}"
    finished = sorted(root.glob("lightning_logs/version_*/test_metrics.json"))
    if not finished or args.rerun:
        command = [sys.executable, str(REPO / "project" / "lit_classifier_main.py"), "--data_dir", args.data_dir,
                   "--backbone_weights", args.backbone_weights, "--seed", str(seed), "--default_root_dir", str(root),
                   *passthrough]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        finished = sorted(root.glob("lightning_logs/version_*/test_metrics.json"))
    return json.loads(finished[-1].read_text())


def markdown(name: str, runs: List[Dict], seeds: List[int]) -> str:
    """mean ± std per metric over seeds, and the first seed's confusion matrix."""
    per_seed = [derived_metrics(run) for run in runs]
    lines = [f"### Recipe `{name}`: {len(runs)} seeds ({', '.join(map(str, seeds))}), "
             f"{runs[0]['test_images']} test images each", "", "| metric | mean ± std | per seed |", "|---|---|---|"]
    for key in per_seed[0]:
        values = [m[key] for m in per_seed]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        percent = key not in ("test_loss", "epochs", "wall_time_min")
        fmt = (lambda v: f"{100 * v:.1f} %") if percent else (lambda v: f"{v:.2f}")
        lines.append(f"| {key} | {fmt(statistics.mean(values))} ± {fmt(spread).replace(' %', '')} | "
                     f"{' / '.join(fmt(v) for v in values)} |")
    lines += ["", f"Confusion matrix, seed {seeds[0]} (rows true, columns predicted):", "",
              "| true \\ pred | " + " | ".join(GROUP_LABELS) + " |", "|---" * (len(GROUP_LABELS) + 1) + "|"]
    for label, row in zip(GROUP_LABELS, runs[0]["confusion_matrix"]):
        lines.append(f"| {label} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--backbone_weights", default="imagenet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe_name", default="notebook")
    parser.add_argument("--work_dir", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--rerun", action="store_true", help="train again even if a seed has a finished run")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args(own)
    runs = [run_seed(seed, args, passthrough) for seed in args.seeds]
    table = markdown(args.recipe_name, runs, args.seeds)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
