"""How much a file-by-file split's figures owe to copies: a checkpoint's test faces, by what their copies are.

    python benchmarks/leakage.py --data_dir ../shared/data/UTKFace.tar.gz \
        --ckpt runs/old/lightning_logs/version_0/checkpoints/best-....ckpt --precision int8

Tests the checkpoint on its run's test split (the ``split.json`` beside it) with the training run's own machinery
(cached features in the run's feature precision, so the figures match its ``test_metrics.json``), then splits the
test faces into: a copy of the same photo in training under the same age; one under another age; a copy only in
validation or test; no copy. Group accuracy and MAE per kind say what leakage (seen faces) and label noise
(contradicting copies) did to the old figure.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.config.devices import machine_name  # noqa: E402
from project.config.settings import DataSettings, default_cache_dir  # noqa: E402
from project.data import duplicates  # noqa: E402
from project.lit_classifier_main import LitClassifier  # noqa: E402
from project.training import run, run_files  # noqa: E402


def face_kinds(datamodule) -> List[str]:
    """Per test face (in the test split's order), what its copies are."""
    items = datamodule.scan.items
    copies = duplicates.copies_in(datamodule.root, items, datamodule.settings.cache_dir)
    side = {}
    for name in ("train", "val", "test"):
        for row in datamodule.split.indices[name].tolist():
            side[row] = name
    partners: Dict[int, List[int]] = defaultdict(list)
    for group in copies.groups:
        for row in group:
            partners[row] = [other for other in group if other != row]
    kinds = []
    for row in datamodule.split.indices["test"].tolist():
        training = [other for other in partners[row] if side.get(other) == "train"]
        if any(items[other].age != items[row].age for other in training):
            kinds.append("a copy in training under another age")
        elif training:
            kinds.append("a copy in training, same age")
        elif partners[row]:
            conflicting = any(items[other].age != items[row].age for other in partners[row])
            kinds.append("copies in validation/test only" + (" (another age)" if conflicting else ""))
        else:
            kinds.append("no copy")
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--precision", default="int8", help="the feature precision the run was trained with")
    args = parser.parse_args()
    model = LitClassifier.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    split_file = run_files.run_dir_of(args.ckpt) / run_files.SPLIT_FILE_NAME
    data = DataSettings(data_dir=Path(args.data_dir), cache_dir=default_cache_dir(), batch_size=64, seed=42,
                        num_workers=2, split_file=split_file, strict_data=False, feature_cache=True)
    datamodule = run.build_datamodule(data, model.net, args.precision)
    datamodule.setup("test")
    rows = []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            step = model.model_step(batch, calibrated=True)
            rows.append(model._records(batch, step))
    records = torch.cat(rows).numpy()  # age, group, predicted group, estimated age, ...
    kinds = np.array(face_kinds(datamodule))
    lines = [f"{args.ckpt.name} on {len(records):,} test faces of {split_file}; {machine_name()}", "",
             "| test faces | count | group accuracy | MAE (years) |", "|---|---|---|---|"]
    for kind in ["all"] + sorted(set(kinds.tolist())):
        chosen = np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind
        picked = records[chosen]
        accuracy = np.mean(picked[:, 1] == picked[:, 2])
        mae = np.mean(np.abs(picked[:, 3] - picked[:, 0]))
        lines.append(f"| {kind} | {len(picked):,} | {accuracy:.1%} | {mae:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
