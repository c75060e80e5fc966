"""A trained network tested on labelled images through the prediction path (no Lightning, no feature cache).

What a bundled model's card reports, and what anyone with the dataset can re-run: every image goes through exactly
the preprocessing and the backbone that prediction uses, so the figures describe what users get.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from project.core.age_groups import GROUP_LABELS, NUM_CLASSES
from project.core.age_report import FaceResults, age_metrics, slice_rows
from project.models.checkpoint import TrainedNet


@dataclass
class Evaluation:
    """Per-face results of a test pass and the calibrated group probabilities behind them (``N x 5``)."""

    records: FaceResults
    probabilities: np.ndarray

    def metrics(self) -> Dict:
        """Accuracy, macro-F1, per-group recall, errors in years, interval coverage and the slice table."""
        records = self.records
        recall, f1 = {}, []
        for group, label in enumerate(GROUP_LABELS):
            truth, guess = records.group == group, records.predicted_group == group
            hits = float((truth & guess).sum())
            recall[label] = hits / truth.sum() if truth.any() else None
            if truth.any() or guess.any():
                f1.append(2 * hits / (truth.sum() + guess.sum()))
        return {"faces": int(len(records.age)),
                "accuracy": float((records.predicted_group == records.group).mean()),
                "macro_f1": float(np.mean(f1)), "recall": recall,
                "ages": age_metrics(records), "slices": slice_rows(records)}


def evaluate(trained: TrainedNet, dataset: Dataset, batch_size: int = 32, num_workers: int = 2,
             description: Optional[str] = None) -> Evaluation:
    """``trained`` on every item of ``dataset`` (an ``ImageDataset`` serving the ``original`` view: the network
    adds the mirror image itself)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    columns = {name: [] for name in ("age", "group", "predicted_group", "estimate", "low", "high", "gender",
                                     "ethnicity")}
    probabilities = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=description or f"Testing {trained.name}", unit="batch",
                          disable=description == ""):
            images = batch["images"][:, 0].to(trained.device, trained.dtype)
            probs, ages = trained.predict(images)
            probabilities.append(probs.cpu().numpy())
            nan = np.full(len(images), np.nan)
            columns["predicted_group"].append(probs.argmax(dim=1).cpu().numpy())
            columns["estimate"].append(nan if ages is None else ages.age.numpy())
            columns["low"].append(nan if ages is None or ages.low is None else ages.low.numpy())
            columns["high"].append(nan if ages is None or ages.high is None else ages.high.numpy())
            for name in ("age", "group", "gender", "ethnicity"):
                columns[name].append(batch[name].numpy())
    records = FaceResults(**{name: np.concatenate(parts) for name, parts in columns.items()})
    return Evaluation(records, np.concatenate(probabilities).reshape(-1, NUM_CLASSES))
