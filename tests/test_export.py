"""Export to ONNX: the whole predictor in one file, exact against torch, usable by prediction and the server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e .[onnx]")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install -e .[onnx]")

from helpers.models import tiny_model  # noqa: E402

from project.config.recipes import NOTEBOOK  # noqa: E402
from project.export import main  # noqa: E402
from project.inference.onnx_backend import OnnxNet  # noqa: E402
from project.inference.predictor import AgeGroupPredictor, PredictorNet  # noqa: E402
from project.models.checkpoint import TrainedNet, load_trained_net  # noqa: E402
from project.models.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """The shared test checkpoint (default recipe, 32 px, calibrated ages) exported by the command line."""
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["--ckpt", str(checkpoint), "--output", str(path)]) == 0
    return path


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_gives_the_torch_probabilities_for_any_batch_size(checkpoint, exported, batch):
    trained, onnx = load_trained_net(checkpoint), OnnxNet(exported)
    assert isinstance(trained, PredictorNet) and isinstance(onnx, PredictorNet)  # the predictor's seam
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        expected, expected_ages = trained.predict(images)
    got, ages = onnx.predict(images)
    assert got.shape == (batch, 5) and (got - expected).abs().max() <= 1e-4
    assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))
    assert torch.allclose(ages.age, expected_ages.age, atol=1e-3) and torch.allclose(ages.high, expected_ages.high,
                                                                                    atol=1e-3)


def test_the_file_alone_predicts_like_the_checkpoint(checkpoint, exported, photo_dir, capsys):
    torch_predictions = AgeGroupPredictor.from_checkpoint(checkpoint).predict(photo_dir, face_detector=None)
    onnx_predictions = AgeGroupPredictor.from_checkpoint(exported, backend="onnx").predict(photo_dir,
                                                                                          face_detector=None)
    assert [p.group for p in onnx_predictions] == [p.group for p in torch_predictions]
    for ours, theirs in zip(onnx_predictions, torch_predictions):
        if ours.ok:
            assert ours.probabilities == pytest.approx(theirs.probabilities, abs=1e-4)
            assert ours.age == pytest.approx(theirs.age, abs=1e-2)


def test_a_model_without_ages_exports_probabilities_only(tmp_path):
    model = tiny_model(NOTEBOOK).eval()
    path = export_onnx(TrainedNet(model.net, 1.0, None), tmp_path / "notebook.onnx")
    onnx = OnnxNet(path)
    assert onnx.outputs == ["probabilities"] and onnx.age_calibration is None
    probabilities, ages = onnx.predict(torch.zeros(2, 3, 32, 32))
    assert ages is None and np.allclose(probabilities.sum(dim=1).numpy(), 1.0, atol=1e-5)


def test_bad_exports_and_backends_are_one_line_errors(checkpoint, exported, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(checkpoint), "--output", str(tmp_path / "model.bin")])
    assert exit_info.value.code == 2 and "must end in .onnx" in capsys.readouterr().err
    from project.common.errors import UserError

    with pytest.raises(UserError, match="use --backend onnx"):
        AgeGroupPredictor.from_checkpoint(exported)
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(UserError, match="cannot load .* as an exported age-group model"):
        OnnxNet(not_onnx)


def test_the_predict_command_and_the_server_take_the_onnx_backend(checkpoint, exported, photo_dir, tmp_path):
    import json

    from project.predict import main as predict

    assert predict(["--ckpt", str(exported), str(photo_dir / "rgb.png"), "--backend", "onnx", "--output",
                    str(tmp_path / "onnx.json"), "--no-detect_faces"]) == 0
    assert predict(["--ckpt", str(checkpoint), str(photo_dir / "rgb.png"), "--output",
                    str(tmp_path / "torch.json"), "--no-detect_faces"]) == 0
    [onnx], [torch_record] = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("onnx", "torch"))
    assert onnx["group"] == torch_record["group"] and onnx["age"] == pytest.approx(torch_record["age"], abs=1e-2)

    pytest.importorskip("litserve", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from project.serve.server import build_server

    server = build_server(exported, accelerator="cpu", detect_faces=False, backend="onnx")
    with wrap_litserve_start(server) as started, TestClient(started.app) as client:
        answer = client.post("/predict", files={"image": ("rgb.png", (photo_dir / "rgb.png").read_bytes(),
                                                          "image/png")}).json()
        assert answer["faces"][0]["group"] == torch_record["group"]
        assert client.get("/info").json()["model"]["backend"] == "onnx"
