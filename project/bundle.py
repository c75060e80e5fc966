"""``age-classifier-bundle``: a trained checkpoint turned into the small, offline bundled form.

    age-classifier-bundle --ckpt lightning_logs/version_0/checkpoints/best-...ckpt --output my_model/ \\
        --data_dir UTKFace.tar.gz      # also test it on its run's test split and record the figures

The bundle (``project.models.bundle``) holds the backbone layers the network runs and its heads in float16
(safetensors), its calibrations and settings (``model.json``), and the test split's file names. With
``--data_dir`` the command tests the checkpoint (float32) and the bundle on that split through the prediction path,
records the bundle's metrics in ``model.json`` and reports how many decisions float16 changed. The package's own
model (``project/pretrained/``) is made by this command; ``--ckpt`` of predict, serve and export takes a bundle's
folder as well as a checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from project import __version__  # noqa: E402
from project.common.errors import OneLineArgumentParser, UserError, add_debug_argument, exit_on_user_error  # noqa: E402
from project.config.devices import machine_name  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.data.datasets import files_dataset  # noqa: E402
from project.data.split import split_names  # noqa: E402
from project.inference.evaluation import Evaluation, evaluate  # noqa: E402
from project.models.bundle import (  # noqa: E402
    METRICS_FILE,
    RECORD_FILE,
    TEST_FILES,
    load_bundle,
    write_bundle,
    write_record,
)
from project.models.checkpoint import load_trained_net, run_folder_of  # noqa: E402

PROGRAM = "age-classifier-bundle"


def training_record(checkpoint: Path, command: Optional[str]) -> Dict:
    """How the checkpoint was trained: its file, the run's settings and its own test figures, where the run folder
    still has them."""
    record: Dict = {"checkpoint": checkpoint.name}
    run_folder = run_folder_of(checkpoint)
    config_path, metrics_path = run_folder / "run_config.json", run_folder / "test_metrics.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if command is None and config:
        command = (f"python project/lit_classifier_main.py --data_dir {Path(config['data_dir']).name} "
                   f"--recipe {config['recipe']} --seed {config['seed']}"
                   + (" --photo_views" if config.get("photo_views") else ""))
    record["command"] = command
    for key in ("recipe", "seed", "image_size", "photo_views", "precision", "feature_precision", "max_epochs"):
        if key in config:
            record[key] = config[key]
    if config:  # runs of releases before 0.5.0 recorded no split kind: they split file by file
        record["split"] = config.get("split", "random")
        if record["split"] == "grouped":
            record["copy_labels"] = config.get("copy_labels")
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        record["run_test"] = {"accuracy": metrics.get("test_acc"), "mae": (metrics.get("ages") or {}).get("mae"),
                              "note": "the training run's own test, on its cached features"}
    return record


def fp16_check(full: Evaluation, bundled: Evaluation) -> Dict:
    """How far storing the weights in float16 moved the test figures."""
    changed = int((full.records.predicted_group != bundled.records.predicted_group).sum())
    full_metrics, bundled_metrics = full.metrics(), bundled.metrics()
    return {
        "decisions_changed": changed, "share_changed": changed / len(full.probabilities),
        "max_abs_diff_probabilities": float(np.abs(full.probabilities - bundled.probabilities).max()),
        "accuracy_float32": full_metrics["accuracy"], "accuracy_float16": bundled_metrics["accuracy"],
        "mae_float32": full_metrics["ages"].get("mae"), "mae_float16": bundled_metrics["ages"].get("mae"),
    }


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _years(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def metrics_markdown(record: Dict) -> str:
    """The test figures of a bundle's ``model.json`` as Markdown tables: overall, then every slice, worst first."""
    test = record["test"]
    metrics, check = test["metrics"], test["float16_check"]
    ages = metrics["ages"]
    lines = [f"{metrics['faces']} test faces, {test['machine']}, torch {test['torch']}, {test['date']}.", "",
             "| group accuracy | macro-F1 | MAE (years) | median error | CS(5) | mean signed error | 80 % interval "
             "holds the age | mean interval width |", "|---" * 8 + "|",
             f"| {_percent(metrics['accuracy'])} | {metrics['macro_f1']:.3f} | {_years(ages.get('mae'))} "
             f"| {_years(ages.get('median_absolute_error'))} | {_percent(ages.get('cs5'))} "
             f"| {ages.get('mean_signed_error', 0):+.2f} | {_percent(ages.get('interval_coverage'))} "
             f"| {_years(ages.get('interval_width'))} |", "",
             "Recall per age group: " + ", ".join(f"{label} {_percent(value)}"
                                                  for label, value in metrics["recall"].items()) + ".", "",
             "| slice | faces | accuracy | MAE (years) | mean signed error (+: too old) | interval holds the age |",
             "|---" * 6 + "|"]
    for kind in ("age band", "gender", "ethnicity"):
        rows = sorted((row for row in metrics["slices"] if row["slice"] == kind),
                      key=lambda row: -(row["mae"] if row["mae"] is not None else 0))
        for row in rows:
            signed = "-" if row["mean_signed_error"] is None else f"{row['mean_signed_error']:+.2f}"
            lines.append(f"| {kind}: {row['value']} | {row['count']} | {_percent(row['accuracy'])} "
                         f"| {_years(row['mae'])} | {signed} | {_percent(row['interval_coverage'])} |")
    lines += ["", f"Stored in float16: {check['decisions_changed']} of {metrics['faces']} decisions changed "
                  f"({check['share_changed']:.2%}); accuracy {_percent(check['accuracy_float32'])} in float32, "
                  f"{_percent(check['accuracy_float16'])} in float16; MAE {_years(check['mae_float32'])} and "
                  f"{_years(check['mae_float16'])} years."]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", "--ckpt_path", dest="ckpt", required=True, help="checkpoint written by training")
    parser.add_argument("--output", required=True, help="the folder to write the bundle into")
    parser.add_argument("--name", default=None, help="the model's name in every answer (default: the checkpoint's "
                                                     "recipe, seed and file)")
    parser.add_argument("--data_dir", default=None, help="test the checkpoint and the bundle on its run's test split")
    parser.add_argument("--split_file", default=None, help="the run's split.json (default: beside the checkpoint)")
    parser.add_argument("--training_command", default=None, help="the command that trained it, for model.json "
                                                                 "(default: rebuilt from the run's run_config.json)")
    parser.add_argument("--num_workers", type=int, default=2, help="image-decoding processes for the test")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Bundle, test (with ``--data_dir``), report; exit code 2 for a usage error."""
    args = get_args_parser().parse_args(argv)
    with exit_on_user_error(PROGRAM, debug=args.debug):
        checkpoint, output = Path(args.ckpt).expanduser(), Path(args.output).expanduser()
        split_file = Path(args.split_file).expanduser() if args.split_file else \
            run_folder_of(checkpoint) / "split.json"
        if args.data_dir and not split_file.is_file():
            raise UserError(f"no split.json beside {checkpoint}: pass --split_file")
        trained = load_trained_net(checkpoint)
        training = training_record(checkpoint, args.training_command)
        name = args.name or f"{training.get('recipe', 'custom')}-seed{training.get('seed', '?')}-{checkpoint.stem}"
        names: Optional[List[str]] = split_names(split_file)["test"] if split_file.is_file() else None
        record = {"created": datetime.date.today().isoformat(), "project_version": __version__,
                  "training": training}
        write_bundle(trained, output, name, record, names)
        if args.data_dir and names:
            dataset = files_dataset(args.data_dir, names, trained.image_size, default_cache_dir())
            full = evaluate(trained, dataset, num_workers=args.num_workers, description="Testing the checkpoint")
            bundled = evaluate(load_bundle(output), dataset, num_workers=args.num_workers,
                               description="Testing the bundle")
            record["test"] = {"files": TEST_FILES, "machine": machine_name(), "torch": torch.__version__,
                              "date": datetime.date.today().isoformat(), "metrics": bundled.metrics(),
                              "float16_check": fp16_check(full, bundled)}
            write_record(trained, output, name, record)  # the weights written above are the ones tested
            (output / METRICS_FILE).write_text(metrics_markdown(record))
            check = record["test"]["float16_check"]
            metrics = record["test"]["metrics"]
            print(f"{PROGRAM}: {name} on {len(names)} test faces: accuracy {metrics['accuracy']:.2%}, MAE "
                  f"{metrics['ages'].get('mae', float('nan')):.2f} years; float16 changed {check['decisions_changed']}"
                  f" decisions ({check['share_changed']:.2%}), accuracy {check['accuracy_float32']:.2%} -> "
                  f"{check['accuracy_float16']:.2%}")
        size = sum(path.stat().st_size for path in output.iterdir() if path.is_file())
        print(f"{PROGRAM}: wrote {output} ({size / 1e6:.1f} MB: weights, {RECORD_FILE}"
              + (f", {TEST_FILES}" if names else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
