"""The whole predictor as one ONNX graph: preprocessed images in, calibrated probabilities out.

The graph holds the frozen backbone, the heads, the mirror view and its averaging, and the temperature; it returns
``probabilities`` (``N x 5``) and, for networks with per-year outputs, ``year_probabilities`` (``N x 125``), for any
batch size. The metadata entry :data:`METADATA_KEY` records the network's settings and calibrations, so the file
alone is enough to predict with (``project.inference.onnx_backend``). Exported with torch's dynamo exporter, fp32.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import nn

from project.models.checkpoint import TrainedNet

#: The ONNX metadata entry holding the settings and calibrations (JSON).
METADATA_KEY = "age_group_classifier"
EXPORT_FORMAT = 1
OPSET = 18


class PredictorModule(nn.Module):
    """A trained network and its temperature as one module: images -> probabilities (and per-year probabilities)."""

    def __init__(self, trained: TrainedNet) -> None:
        super().__init__()
        self.net = trained.net
        self.temperature = float(trained.temperature)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        logits, years = self.net.predict(images)
        probabilities = torch.softmax(logits.float() / self.temperature, dim=1)
        return (probabilities,) if years is None else (probabilities, years)


def output_names(trained: TrainedNet) -> Tuple[str, ...]:
    return ("probabilities", "year_probabilities") if trained.net.predicts_ages else ("probabilities",)


def metadata(trained: TrainedNet) -> str:
    """What the file must say about itself to be used without its checkpoint."""
    calibration = trained.age_calibration
    return json.dumps({"format": EXPORT_FORMAT, "net": trained.net.settings.to_dict(),
                       "temperature": trained.temperature,
                       "age_calibration": calibration.to_dict() if calibration else None, "name": trained.name})


def export_onnx(trained: TrainedNet, output: Union[str, Path]) -> Path:
    """Write ``trained`` as an ONNX file with a dynamic batch size; returns its path."""
    import onnx

    output = Path(output)
    size = trained.net.settings.input.image_size
    module = PredictorModule(trained).eval().float()
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports every step on stdout
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                    output_names=list(output_names(trained)), dynamic_shapes=({0: batch},),
                                    verbose=False)
        program.optimize()
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata(trained)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output))
    return output
