"""The fine-tuning recipe: block 4's full-resolution output cached, VGG16's block 5 trained above it; and the
GPU-only ``--finetune all``. Everywhere a checkpoint goes (re-test, prediction, bundle, ONNX) takes its model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.config import fast_flags, run_dir, settings_for
from helpers.synthetic import write_synthetic_utkface
from torchvision.models import vgg16

from project.cli import checks as cli_checks
from project.cli.train import main
from project.config.precision import finetune_all_blocker
from project.data.feature_cache import FeatureCacheBuilder
from project.data.scan import scan_utkface
from project.inference.predictor import AgeGroupPredictor
from project.models.backbone import build_backbone, layers_run
from project.models.bundle import WEIGHTS_FILE, load_bundle, write_bundle
from project.models.checkpoint import load_trained_net
from project.training.run import retest

#: ``vgg16().features`` indices of block 5's three convolutions (the layers the recipe trains)
BLOCK5_CONVS = (24, 26, 28)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Seeded random VGG16 conv weights in a file, standing in for the ImageNet weights."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "vgg16_features.pth"
    torch.save(vgg16(weights=None).features.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, weights_file):
    """A two-epoch ``--recipe finetune`` run on 60 synthetic images: (flags, run folder, metrics)."""
    root = tmp_path_factory.mktemp("finetuned")
    write_synthetic_utkface(root / "UTKFace")
    flags = fast_flags(root / "UTKFace", root / "cache", root / "runs", "--recipe", "finetune",
                       "--backbone_weights", str(weights_file), "--max_epochs", "2")
    assert main(flags) == 0
    folder = run_dir(root / "runs")
    return flags, folder, json.loads((folder / "test_metrics.json").read_text())


def test_the_full_resolution_cut_has_its_own_cache_key_and_is_block_4_before_its_average(utkface_dir, tmp_path):
    items = scan_utkface(utkface_dir).items
    caches = {}
    for layer in ("block4", "block4_full"):
        torch.manual_seed(3)
        builder = FeatureCacheBuilder(build_backbone("none", layer), "32-true", tmp_path / "cache", batch_size=8,
                                      num_workers=0, progress=False)
        caches[layer] = builder.build(utkface_dir, items, 32)
        assert builder.identity(utkface_dir, [item.relpath for item in items], 32, "original")[1]["layer"] == layer
    assert caches["block4"].path != caches["block4_full"].path  # the cut is in the key: caches never mix
    full = caches["block4_full"].read(np.arange(len(items)))
    assert full.shape == (len(items), 512, 2, 2)  # 32 px / 16: block 4's max pool, not averaged
    assert torch.equal(F.avg_pool2d(full, 2), caches["block4"].read(np.arange(len(items))))


def test_block5_trains_while_blocks_1_to_4_stay_bit_identical(finetuned, weights_file):
    _, folder, metrics = finetuned
    pretrained = torch.load(weights_file, weights_only=True)
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, tensor in pretrained.items():  # the frozen base, all of it (block 5's frozen copy is not used)
        assert torch.equal(state[f"net.backbone.layers.{key}"], tensor), key
    for index in BLOCK5_CONVS:
        tuned = state[f"net.tuned.{index}.weight"]  # named by its index in vgg16().features
        assert not torch.equal(tuned, pretrained[f"{index}.weight"]), index
        assert (tuned - pretrained[f"{index}.weight"]).abs().max() < 0.1  # moved a little, from its initial value
    assert metrics["epochs_trained"] == 2 and 0 <= metrics["test_acc"] <= 1


def test_a_finetuned_checkpoint_retests_predicts_bundles_and_exports(finetuned, tmp_path, photo_dir):
    flags, folder, metrics = finetuned
    again = retest(settings_for(flags), Path(metrics["checkpoint"]), folder / "split.json")
    for key in ("test_acc", "test_loss", "confusion_matrix"):
        assert again[key] == metrics[key], key

    trained = load_trained_net(metrics["checkpoint"])
    assert trained.net.tuned is not None and trained.settings.input.feature_layer == "block4_full"
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, expected_ages = trained.predict(images)

    bundled = load_bundle(write_bundle(trained, tmp_path / "bundle", "tiny-finetuned", {}))
    import safetensors.torch

    stored = safetensors.torch.load_file(str(tmp_path / "bundle" / WEIGHTS_FILE))
    assert {f"tuned.{index}.weight" for index in BLOCK5_CONVS} <= set(stored)  # the trained block ships
    assert not any(key.startswith("backbone.layers.") and int(key.split(".")[2]) >= layers_run("block4_full")
                   for key in stored)  # its frozen original does not
    with torch.inference_mode():
        half, _ = bundled.predict(images)
    assert torch.allclose(expected, half, atol=2e-3)

    predictions = AgeGroupPredictor.from_checkpoint(metrics["checkpoint"]).predict(photo_dir, face_detector=None)
    assert predictions and all(p.group is not None for p in predictions if p.error is None)

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e .[onnx]")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install -e .[onnx]")
    from project.export import main as export_main
    from project.inference.onnx_backend import OnnxNet

    exported = tmp_path / "model.onnx"
    assert export_main(["--ckpt", metrics["checkpoint"], "--output", str(exported)]) == 0
    got, ages = OnnxNet(exported).predict(images)
    assert (got - expected).abs().max() <= 1e-4  # the export runs the trained block 5, not ImageNet's
    assert torch.allclose(ages.age, expected_ages.age, atol=1e-3)


def test_finetune_all_is_refused_on_a_cpu_with_one_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(flags + ["--finetune", "all"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "needs a GPU" in message and "--recipe finetune" in message
    assert finetune_all_blocker("cuda") is None


@pytest.mark.parametrize("extra, words", [
    (["--finetune", "block5", "--recipe", "default"], "--finetune belongs to --recipe finetune"),
    (["--recipe", "finetune", "--backbone_lr_factor", "0"], "--backbone_lr_factor must be in (0, 1]"),
])
def test_contradictory_finetuning_flags_are_one_line_errors(flags, capsys, extra, words):
    with pytest.raises(SystemExit) as exit_info:
        main(flags + extra)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_finetune_all_trains_every_layer_from_images_where_allowed(flags, runs, weights_file, monkeypatch):
    """On a GPU ``--finetune all`` trains every VGG16 layer on images (no cache); here the GPU check is lifted to
    run the same path on the CPU at 32 px."""
    monkeypatch.setattr(cli_checks, "finetune_all_blocker", lambda device_type: None)
    assert main(flags + ["--finetune", "all", "--backbone_weights", str(weights_file), "--max_epochs", "1"]) == 0
    metrics = json.loads((run_dir(runs) / "test_metrics.json").read_text())
    assert metrics["feature_cache"] is None  # nothing frozen, nothing cached
    pretrained = torch.load(weights_file, weights_only=True)
    state = torch.load(run_dir(runs) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(state["net.tuned.0.weight"], pretrained["0.weight"])  # block 1 trained too
    assert not torch.equal(state["net.tuned.28.weight"], pretrained["28.weight"])
