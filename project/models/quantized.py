"""The frozen backbone in int8: onnxruntime's static post-training quantization, for CPUs without AMX.

On a CPU with AVX-512-bf16 or AMX, bf16 autocast cuts the feature passes' cost; elsewhere torch runs them in fp32 and a
first run spends hours extracting features. int8 is the other way to cheaper passes, and without AMX the faster one even
where bf16 is native (measured: docs/export-and-speed.md, "Speed figures"): the conv base is exported to ONNX (fp32,
torch's dynamo exporter), quantized by onnxruntime (QDQ: uint8 activations, per-channel int8 weights, MinMax ranges) and
run by onnxruntime. The weights use 7 of their 8 bits (``reduce_range``): x86 CPUs without VNNI (AVX2 only, AVX-512
before Cascade Lake) multiply uint8 by int8 with ``vpmaddubsw``, whose pairwise int16 sums saturate with full-range
weights (the AVX2 kernels' features then drift far further from fp32 than VNNI's; measured: docs/decisions.md, "int8
features with 7-bit weights"); with 7-bit weights no sum can, so every CPU computes the same features (bit for bit, AVX2
against AVX-512 VNNI). Static quantization needs the activations' ranges, measured on calibration images: the caller
passes training images only (``project.data.datamodule`` picks them from the run's training split), so no validation or
test image shapes the features.

The quantized file depends only on the backbone's weights, where it is cut, the image size, the calibration images
and onnxruntime's version (an upgrade quantizes again, and so builds new caches), so it is kept (under ``work_dir``,
named by a hash of those) and a resumed run or a re-test of the same images finds the same file and the same feature
caches. Its bytes' hash is part of the feature-cache key (``cache_identity``): features of another quantization
never mix with these.

Torch fp32 stays the exact reference: prediction, export and the server always run the fp32 backbone, also for
heads trained on int8 features (they score the same on fp32 features; measured: docs/results.md, "Accuracy by
feature precision").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from project.common.errors import UserError
from project.config.precision import INT8_INSTALL_COMMAND
from project.models.backbone import FrozenVGG16Features

#: Bump when the export or quantization settings change: the quantized files (and so the caches) change with it.
QUANTIZATION_VERSION = 2  # 2: 7-bit weights (reduce_range)
_CALIBRATION_BATCH = 16
INSTALL_COMMAND = INT8_INSTALL_COMMAND
INSTALL_HINT = f"int8 features need onnxruntime and onnx: {INSTALL_COMMAND}"


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's graph passes log every step at INFO, which a training run shows: keep them to warnings."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "onnxruntime")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_available() -> None:
    """Raise a one-line :class:`UserError` when the packages the int8 backbone needs are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 - torch's dynamo exporter builds the graph with it
    except ImportError as err:
        raise UserError(f"{INSTALL_HINT} ({err.name} is not installed)") from None


def is_available() -> bool:
    """Whether the packages the int8 backbone needs are installed."""
    try:
        check_available()
    except UserError:
        return False
    return True


def export_backbone(backbone: nn.Module, image_size: int, path: Path) -> Path:
    """The frozen backbone alone as ONNX (fp32, dynamic batch size, ``image_size`` px square images)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports every step on stdout
        program = torch.onnx.export(backbone.eval().float(), (torch.zeros(2, 3, image_size, image_size),),
                                    dynamo=True, input_names=["images"], output_names=["features"],
                                    dynamic_shapes=({0: batch},))
        program.optimize()
    program.save(str(path))
    return path


def quantize_int8(model: Path, calibration: np.ndarray, path: Path) -> Path:
    """Static int8 quantization of ``model`` (QDQ, uint8 activations, per-channel 7-bit int8 weights, MinMax
    ranges), calibrated on ``calibration`` (``N x 3 x S x S`` float32, preprocessed images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, -(-len(calibration) // _CALIBRATION_BATCH))))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch, dtype=np.float32)}

    prepared = path.with_suffix(".prep.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=True)  # see the module docstring: no int16 saturation without VNNI
    return path


def cpu_session(model: Union[Path, bytes]):
    """An onnxruntime session on the CPU with the threads torch uses, of a file or of its bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class Int8Features(nn.Module):
    """The frozen backbone's features computed by its int8 quantization (see the module docstring).

    Usable as the feature cache's encoder after :meth:`calibrate`: ``forward`` takes preprocessed images
    ``N x 3 x S x S`` at the calibrated size and returns float32 features of the backbone's shape.
    """

    def __init__(self, backbone: FrozenVGG16Features, work_dir: os.PathLike) -> None:
        super().__init__()
        self.backbone = backbone
        self.work_dir = Path(work_dir)
        self.image_size: Optional[int] = None
        self.model_path: Optional[Path] = None
        self._session = None
        self._digest: Optional[str] = None

    def train(self, mode: bool = True) -> "Int8Features":  # frozen like the backbone it quantizes
        return super().train(False)

    def calibration_key(self, image_size: int, calibration_names: str) -> str:
        """What the quantized file depends on, hashed: its name."""
        import onnxruntime

        identity = {"version": QUANTIZATION_VERSION, "image_size": image_size, "images": calibration_names,
                    "onnxruntime": onnxruntime.__version__, **self.backbone.cache_identity()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]

    def calibrate(self, images: np.ndarray, image_size: int, calibration_names: str) -> Path:
        """Quantize with ``images`` (``N x 3 x S x S`` float32, training images only), or reuse the file an earlier
        run made from the same images (``calibration_names`` identifies them: names and sizes, say)."""
        check_available()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        key = self.calibration_key(image_size, calibration_names)
        path = self.work_dir / f"vgg16-{self.backbone.layer}-{image_size}px-int8-{key}.onnx"
        # Two runs of the same calibration wait for one quantization, like the feature caches.
        with FileLock(path.with_suffix(".lock")):
            if not path.is_file():
                with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=".quantizing-") as scratch, \
                        _quiet_exporter():
                    fp32 = export_backbone(self.backbone, image_size, Path(scratch) / "backbone.onnx")
                    quantized = quantize_int8(fp32, images, Path(scratch) / "backbone.int8.onnx")
                    os.replace(quantized, path)  # whole or absent: a killed run leaves only its scratch folder
            model = path.read_bytes()  # read once: the session and the cache key come from the same bytes
        self.image_size, self.model_path = image_size, path
        self._session = cpu_session(model)
        self._digest = hashlib.sha256(model).hexdigest()[:16]
        return path

    def _require_calibrated(self) -> None:
        if self._session is None:
            raise RuntimeError("Int8Features.calibrate() must run before the int8 backbone is used")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> features ``N x 512 x S/32 x S/32`` (float32, on the CPU)."""
        self._require_calibrated()
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"the int8 backbone was quantized for {self.image_size} px images, not "
                             f"{tuple(images.shape[-2:])}")
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self._session.run(None, {"images": array})[0])

    def feature_shape(self, image_size: int) -> tuple:
        return self.backbone.feature_shape(image_size)

    def cache_identity(self) -> dict:
        """The backbone's identity and the quantized file's hash."""
        self._require_calibrated()
        return {**self.backbone.cache_identity(), "int8": self._digest}
