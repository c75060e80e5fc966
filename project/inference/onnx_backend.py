"""Prediction with an exported ONNX file and onnxruntime: no torch model, no Lightning, no checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from project.common.errors import UserError, first_line
from project.config.settings import NetSettings
from project.core.calibration import AgeCalibration, AgeEstimate
from project.models.export import EXPORT_FORMAT, METADATA_KEY

INSTALL_HINT = "pip install -e .[onnx]"


class OnnxNet:
    """An exported predictor (``age-classifier-export``) run by onnxruntime on the CPU.

    It answers like :class:`~project.models.checkpoint.TrainedNet`: :meth:`predict` turns preprocessed images into
    calibrated group probabilities and, for models with ages, an :class:`~project.core.calibration.AgeEstimate`.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, model: Union[str, Path, bytes], threads: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"--backend onnx needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            record = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except Exception as err:  # noqa: BLE001 - any unusable file is explained in one line
            name = "the exported model" if isinstance(model, bytes) else model
            raise UserError(f"cannot load {name} as an exported age-group model ({first_line(err)}); export one with "
                            f"age-classifier-export") from None
        if record.get("format") != EXPORT_FORMAT:
            raise UserError(f"{model} was exported in format {record.get('format')}; this release reads "
                            f"{EXPORT_FORMAT}: export it again")
        self.settings = NetSettings.from_dict(record["net"])
        self.temperature = float(record["temperature"])
        calibration = record["age_calibration"]
        self.age_calibration = AgeCalibration.from_dict(calibration) if calibration else None
        self.outputs = [output.name for output in self.session.get_outputs()]
        #: which model answers (for every answer to name): the exported model's own name, else its file's
        self.name = name or record.get("name") or (f"exported {Path(model).name}" if not isinstance(model, bytes)
                                                    else "an exported model")

    @property
    def image_size(self) -> int:
        return self.settings.input.image_size

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[AgeEstimate]]:
        """Preprocessed images ``N x 3 x S x S`` -> probabilities ``N x 5`` and the ages (or ``None``)."""
        results = self.session.run(None, {"images": np.ascontiguousarray(images.float().cpu().numpy())})
        outputs = dict(zip(self.outputs, results))
        probabilities = torch.from_numpy(outputs["probabilities"])
        years = outputs.get("year_probabilities")
        if years is None or self.age_calibration is None:
            return probabilities, None
        return probabilities, self.age_calibration.estimate(torch.from_numpy(years))
