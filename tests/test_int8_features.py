"""int8 features (``--precision int8``): onnxruntime's quantization of the backbone, calibrated on training images
only, with a cache key of its own; its errors."""

import json
import logging
import platform
import sys

import numpy as np
import pytest
import torch
from helpers.config import fast_flags, run_dir, settings_for
from helpers.models import random_backbone

from project.common.errors import UserError
from project.config.precision import native_precision
from project.data.datasets import ImageDataset
from project.data.feature_cache import CalibratedEncoder, FeatureCacheBuilder
from project.data.scan import scan_utkface
from project.models.quantized import Int8Features
from project.training import run

for _package in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_package, reason="int8 features need the onnx extra: pip install -e .[onnx]")
import onnx  # noqa: E402 - only once the skip above has let the module through


def test_int8_features_approximate_fp32_and_have_their_own_cache_key(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items[:24]
    backbone = random_backbone("block4")
    encoder = Int8Features(random_backbone("block4"), cache_dir / "int8")
    assert isinstance(encoder, CalibratedEncoder)  # the feature cache's seam for calibrated encoders
    with pytest.raises(RuntimeError, match="calibrate"):
        encoder.cache_identity()
    int8 = FeatureCacheBuilder(encoder, "int8", cache_dir / "features", batch_size=8, num_workers=0, progress=False)
    int8.calibrate(utkface_dir, items[:16], 32)
    quantized = sorted((cache_dir / "int8").glob("*.onnx"))
    assert len(quantized) == 1 and not list((cache_dir / "int8").glob(".quantizing-*"))
    weights = [onnx.numpy_helper.to_array(tensor) for tensor in onnx.load(str(quantized[0])).graph.initializer
               if tensor.data_type == onnx.TensorProto.INT8 and tensor.dims]
    # 7-bit weights: uint8 x int8 pair sums fit int16, so CPUs without VNNI (vpmaddubsw) do not saturate
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64

    features = int8.build(utkface_dir, items, 32).read(np.arange(len(items)))
    images = torch.stack([ImageDataset(utkface_dir, items, 32)[i]["images"][0] for i in range(len(items))])
    with torch.no_grad():
        exact = backbone(images)
    relative = ((features - exact).norm(dim=1) / exact.norm(dim=1)).mean().item()
    assert features.shape == exact.shape and 0 < relative < 0.1, relative
    with pytest.raises(ValueError, match="quantized for 32 px"):
        encoder(torch.zeros(1, 3, 64, 64))

    relpaths = [item.relpath for item in items]
    keys = {FeatureCacheBuilder(backbone, precision, cache_dir, progress=False).identity(
        utkface_dir, relpaths, 32, "original")[0] for precision in ("32-true", "16-mixed")}
    own, identity = int8.identity(utkface_dir, relpaths, 32, "original")
    assert own not in keys and identity["int8"] and identity["dtype"] == "float16"  # 16-mixed's dtype, other key

    # The same calibration images find the same quantized file (a resumed run or a re-test); others make another.
    again = Int8Features(random_backbone("block4"), cache_dir / "int8")
    assert again.calibrate(images[:16].numpy(), 32, "names") and len(list((cache_dir / "int8").glob("*.onnx"))) == 2
    made = quantized[0].stat().st_mtime_ns
    FeatureCacheBuilder(again, "int8", cache_dir / "features", progress=False).calibrate(utkface_dir, items[:16], 32)
    assert again.model_path == quantized[0] and again.cache_identity() == encoder.cache_identity()
    assert quantized[0].stat().st_mtime_ns == made  # read, not made again
    with pytest.raises(ValueError, match="calibrates itself"):
        FeatureCacheBuilder(backbone, "int8", cache_dir)


def test_int8_run_calibrates_on_training_images_records_its_precision_and_reuses_its_files(
        utkface_dir, cache_dir, runs, monkeypatch):
    calibrated_on = []
    calibrate = FeatureCacheBuilder.calibrate

    def recording(builder, root, items, image_size):
        calibrated_on.append([item.relpath for item in items])
        return calibrate(builder, root, items, image_size)

    monkeypatch.setattr(FeatureCacheBuilder, "calibrate", recording)
    flags = fast_flags(utkface_dir, cache_dir, runs, "--max_epochs", "1")
    flags[flags.index("--precision") + 1] = "int8"
    settings = settings_for(flags)
    assert settings.trainer.feature_precision == "int8" and settings.trainer.precision == native_precision("cpu")
    metrics = run.train(settings)
    assert metrics["feature_precision"] == "int8"
    assert json.loads((run_dir(runs) / "run_config.json").read_text())["feature_precision"] == "int8"

    # calibrated once, on training images only: every image but the split's validation and test images
    split = json.loads((run_dir(runs) / "split.json").read_text())
    everything = {item.relpath for item in scan_utkface(utkface_dir).items}
    training = everything - set(split["val"]) - set(split["test"])
    assert len(calibrated_on) == 1 and set(calibrated_on[0]) == training  # 50 < 256: all of them
    cache_meta = [json.loads(path.read_text()) for path in (cache_dir / "features").glob("*.json")]
    assert len(cache_meta) == 2 and all(meta["precision"] == "int8" and meta["identity"]["int8"]
                                        for meta in cache_meta)

    made = {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*") if path.is_file()}
    retested = run.retest(settings, next((run_dir(runs) / "checkpoints").glob("best-*.ckpt")),
                          run_dir(runs) / "split.json")
    assert retested["test_acc"] == metrics["test_acc"] and calibrated_on[1] == calibrated_on[0]
    assert {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*") if path.is_file()} == made

    # --resume and --test_only of an int8 run keep int8 features unless another --precision is given
    best = str(next((run_dir(runs) / "checkpoints").glob("best-*.ckpt")))
    resumed = with_precision(fast_flags(utkface_dir, cache_dir, runs, "--resume", "--max_epochs", "1"), "auto")
    retest = with_precision(fast_flags(utkface_dir, cache_dir, runs, "--test_only", "--ckpt_path", best), "auto")
    assert settings_for(resumed).trainer.feature_precision == settings_for(retest).trainer.feature_precision == "int8"
    assert settings_for(with_precision(resumed, "32")).trainer.feature_precision == "32-true"
    # ... and a run trained on other features keeps them, also where auto would start a new run on int8
    # where int8 cannot run, a re-test falls back to the native features and a resume says what to do
    assert settings_for(retest + ["--no_feature_cache"]).trainer.feature_precision == native_precision("cpu")
    with pytest.raises(UserError, match="drop --no_feature_cache, or choose another --precision"):
        settings_for(resumed + ["--no_feature_cache"])
    # ... and a run trained on other features keeps them, also where auto would start a new run on int8
    _x86_cpu_without_amx(monkeypatch)
    config = run_dir(runs) / "run_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "feature_precision": "32-true"}))
    assert settings_for(resumed).trainer.feature_precision == settings_for(retest).trainer.feature_precision \
        == "32-true"
    config.unlink()  # a checkpoint without its run's files: the same
    assert settings_for(retest).trainer.feature_precision == "32-true"


def with_precision(flags, precision):
    flags = list(flags)
    flags[flags.index("--precision") + 1] = precision
    return flags


def _x86_cpu_without_amx(monkeypatch, avx512_bf16=False):
    """Make this machine an x86 CPU without AMX, whatever it is: AVX2 only (no native bf16), or with
    ``avx512_bf16`` (an AMD Zen 4)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")


def test_auto_picks_int8_features_on_a_cpu_without_native_bf16_where_they_work(
        utkface_dir, cache_dir, runs, monkeypatch, caplog):
    _x86_cpu_without_amx(monkeypatch)
    auto = with_precision(fast_flags(utkface_dir, cache_dir, runs), "auto")
    trainer = settings_for(auto).trainer
    assert (trainer.feature_precision, trainer.precision) == ("int8", "32-true")  # the heads train in fp32
    for extra in (["--no_feature_cache"], ["--num_nodes", "2"]):
        assert settings_for(auto + extra).trainer.feature_precision == "32-true"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.INFO):
        assert settings_for(with_precision(auto, "32")).trainer.feature_precision == "32-true"
        assert not caplog.text  # a chosen precision needs no hint
        assert settings_for(auto).trainer.feature_precision == "32-true"
    assert "Features in fp32: int8 features" in caplog.text and "need the onnx extra: pip install -e .[onnx]" \
        in caplog.text


def test_auto_picks_int8_features_with_bf16_heads_on_a_bf16_cpu_without_amx(
        utkface_dir, cache_dir, runs, monkeypatch, caplog):
    """An AMD Zen 4 (AVX-512-bf16 and VNNI, no AMX): int8 builds the caches 2.2x faster than bf16 there."""
    _x86_cpu_without_amx(monkeypatch, avx512_bf16=True)
    auto = with_precision(fast_flags(utkface_dir, cache_dir, runs), "auto")
    trainer = settings_for(auto).trainer
    assert (trainer.feature_precision, trainer.precision) == ("int8", "bf16-mixed")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.INFO):
        assert settings_for(auto).trainer.feature_precision == "bf16-mixed"
    assert "Features in bf16: int8 features" in caplog.text


@pytest.mark.parametrize("extra, message", [
    (["--no_feature_cache"], "drop --no_feature_cache"),
    (["--num_nodes", "2"], "one process"),
])
def test_int8_refuses_what_it_cannot_do(utkface_dir, cache_dir, runs, extra, message):
    flags = fast_flags(utkface_dir, cache_dir, runs, *extra)
    flags[flags.index("--precision") + 1] = "int8"
    with pytest.raises(UserError, match=message):
        settings_for(flags)


def test_int8_without_onnxruntime_is_a_one_line_error(utkface_dir, cache_dir, runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    flags = fast_flags(utkface_dir, cache_dir, runs)
    flags[flags.index("--precision") + 1] = "int8"
    with pytest.raises(UserError, match=r"pip install -e \.\[onnx\] \(onnxruntime is not installed\)"):
        settings_for(flags)
