"""The bundled form of a trained model: what ships inside the package and answers with no network at all.

A bundle is a folder of these files:

* ``model.safetensors`` - the weights in float16: the frozen backbone's layers that the network runs (a ``block4``
  network drops VGG16's block 5) and the heads. safetensors holds tensors and nothing else, so reading one can run
  no code, and it needs neither torchvision's download nor Lightning;
* ``model.json`` - its name, the network's settings, the calibrations (temperature, age interval) in full
  precision, the training command and the metrics of its own test run;
* ``test_files.txt`` - the file names of the test split it was measured on (names only, never images), so anyone
  with the dataset can re-test it;
* ``metrics.md`` - the figures of ``model.json`` as tables, when the bundle was tested.

:func:`write_bundle` makes one from a :class:`~project.models.checkpoint.TrainedNet`; :func:`load_bundle` reads one
back as a ``TrainedNet`` computing in float32 (float16 only stores the weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from project.common.errors import UserError, first_line
from project.common.fileutils import atomic_path, write_json_atomic
from project.config.settings import NetSettings
from project.core.calibration import AgeCalibration
from project.models.backbone import layers_run
from project.models.checkpoint import CheckpointSummary, TrainedNet
from project.models.net import AgeNet

#: the version of the bundle layout this release reads and writes
BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "model.json"
TEST_FILES = "test_files.txt"
#: its test figures as Markdown tables, for its model card (written by ``age-classifier-bundle``)
METRICS_FILE = "metrics.md"
#: the bundled model shipped with the package
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
#: the dtype weights are stored in: half the size of float32, and rounding them changes almost no decision
STORED_DTYPE = torch.float16


def _import_safetensors():
    try:
        import safetensors.torch
    except ImportError:  # a core requirement, but an environment can still lack it
        raise UserError("reading a bundled model needs safetensors: pip install safetensors") from None
    return safetensors.torch


def bundle_state(trained: TrainedNet) -> Dict[str, torch.Tensor]:
    """The float16 weights a bundle stores: every parameter and buffer the network runs, nothing of VGG16 beyond
    its cut."""
    kept = layers_run(trained.settings.input.feature_layer)
    return {key: value.detach().to("cpu", STORED_DTYPE).contiguous()
            for key, value in trained.net.state_dict().items()
            if not (key.startswith("backbone.layers.") and int(key.split(".")[2]) >= kept)}


def write_bundle(trained: TrainedNet, folder: Union[str, os.PathLike], name: str, record: Dict[str, Any],
                 test_files: Optional[List[str]] = None) -> Path:
    """Write ``trained`` as a bundle into ``folder`` (created; files replaced atomically). ``record`` adds to
    ``model.json`` (training command, metrics, ...); the settings and calibrations come from ``trained``."""
    safetensors = _import_safetensors()
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        safetensors.save_file(bundle_state(trained), str(tmp), metadata={"format": str(BUNDLE_FORMAT), "name": name})
    write_record(trained, folder, name, record)
    if test_files is not None:
        with atomic_path(folder / TEST_FILES) as tmp:
            tmp.write_text("".join(f"{relpath}\n" for relpath in test_files))
    return folder


def write_record(trained: TrainedNet, folder: Path, name: str, record: Dict[str, Any]) -> None:
    """(Re)write a bundle's ``model.json``: ``trained``'s settings and calibrations, and ``record`` (training
    command, metrics, ...); the weights stay as they are."""
    calibration = trained.age_calibration
    write_json_atomic(Path(folder) / RECORD_FILE, {
        "format": BUNDLE_FORMAT, "name": name, "net": trained.settings.to_dict(),
        "temperature": trained.temperature,
        "age_calibration": None if calibration is None else calibration.to_dict(),
        "weights": {"file": WEIGHTS_FILE, "dtype": str(STORED_DTYPE).replace("torch.", "")},
        **record,
    })


def _bundle_folder(path: Union[str, os.PathLike]) -> Path:
    """A bundle is named by its folder or by its ``model.json``."""
    path = Path(path).expanduser()
    return path.parent if path.name == RECORD_FILE else path


def read_record(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A bundle's ``model.json`` (one-line :class:`UserError` when it is missing or not a bundle of this format)."""
    folder = _bundle_folder(folder)
    path = folder / RECORD_FILE
    if not path.is_file():
        raise UserError(f"{Path(folder)} is not a bundled model (no {RECORD_FILE}); make one with "
                        f"age-classifier-bundle --ckpt CKPT --output FOLDER")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({first_line(err)})") from None
    if record.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is a bundle of format {record.get('format')!r}; this release reads format "
                        f"{BUNDLE_FORMAT}")
    return record


def summary_of(record: Dict[str, Any]) -> CheckpointSummary:
    """The settings, temperature and age calibration in a bundle's ``model.json`` (see :func:`read_record`), with
    no weights read; a record that does not describe them is a one-line :class:`UserError`."""
    try:
        calibration = record["age_calibration"]
        return CheckpointSummary(NetSettings.from_dict(record["net"]), float(record["temperature"]),
                                 None if calibration is None else AgeCalibration.from_dict(calibration))
    except Exception as err:  # noqa: BLE001 - every failure is explained in one line
        raise UserError(f"cannot load the bundled model {record.get('name')!r}: {first_line(err)}") from None


def is_bundle(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a bundle's folder (or its ``model.json``), rather than a checkpoint or an ONNX file."""
    path = Path(path).expanduser()
    return (path / RECORD_FILE).is_file() or (path.name == RECORD_FILE and path.is_file())


def listed_test_files(folder: Union[str, os.PathLike] = PRETRAINED_DIR) -> List[str]:
    """The test split's file names a bundle was measured on (empty when it ships none)."""
    path = Path(folder) / TEST_FILES
    return path.read_text().split() if path.is_file() else []


def load_bundle(folder: Union[str, os.PathLike] = PRETRAINED_DIR,
                device: Optional[torch.device] = None) -> TrainedNet:
    """The network (float32, in eval mode, on ``device``) and calibrations of a bundle; the shipped one by
    default. Nothing is downloaded and nothing is unpickled."""
    folder = _bundle_folder(folder)
    record = read_record(folder)
    summary = summary_of(record)
    safetensors = _import_safetensors()
    try:
        state = safetensors.load_file(str(folder / WEIGHTS_FILE))
    except Exception as err:  # noqa: BLE001 - every failure is explained in one line
        raise UserError(f"cannot load the bundled model in {folder}: {first_line(err)}") from None
    with torch.device("meta"):  # no memory and no random init for weights the file replaces
        net = AgeNet(summary.settings)
    net.backbone.drop_unused_layers()
    try:
        net.load_state_dict({key: value.float() for key, value in state.items()}, assign=True)
    except RuntimeError as err:
        raise UserError(f"cannot load the bundled model in {folder}: its weights do not fit its settings "
                        f"({first_line(err)})") from None
    if device is not None:
        net.to(device)
    return TrainedNet(net.eval(), summary.temperature, summary.age_calibration, name=str(record["name"]))
