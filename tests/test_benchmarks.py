"""The benchmark scripts keep working (tiny synthetic inputs; their real numbers go into README)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_metrics_from_a_confusion_matrix():
    accuracy = load("accuracy")
    run = {"confusion_matrix": [[8, 2, 0, 0, 0], [1, 8, 1, 0, 0], [0, 2, 6, 2, 0], [0, 0, 3, 1, 0], [0, 0, 0, 1, 0]],
           "test_acc": 23 / 35, "test_f1": 0.5, "test_loss": 0.9, "epochs_trained": 7, "wall_time_s": 120,
           "test_images": 35}
    metrics = accuracy.derived_metrics(run)
    assert metrics["recall 0-24"] == 0.8 and metrics["recall 75-99"] == 0.25 and metrics["recall 100-124"] == 0.0
    assert metrics["balanced_accuracy"] == pytest.approx((0.8 + 0.8 + 0.6 + 0.25 + 0.0) / 5)
    assert metrics["within_one_group"] == pytest.approx(35 / 35)
    table = accuracy.markdown("notebook", [run, run], [0, 1])
    assert "| accuracy | 65.7 % ± 0.0 |" in table and "| 100-124 | 0 | 0 | 0 | 1 | 0 |" in table
    better = dict(run, test_acc=0.7, test_f1=0.6)
    compared = accuracy.comparison(["notebook", "default"], {"notebook": [run, run], "default": [better, run]}, [0, 1])
    assert "| 0 | 65.7 % / 0.500 | 70.0 % / 0.600 |" in compared
    assert "`default` beats `notebook` in test accuracy on 1 of 2 seeds." in compared
    calibrated = dict(run, test_calibration_error=0.02, temperature=0.9)
    table = accuracy.markdown("default", [calibrated, dict(calibrated, test_calibration_error=0.04)], [0, 1])
    assert "| calibration_error | 3.0 % ± 1.4 | 2.0 % / 4.0 % |" in table and "| temperature | 0.90 ± 0.00 |" in table
    assert "calibration_error" not in accuracy.markdown("notebook", [run, calibrated], [0, 1])  # only if all have it


def test_speed_benchmark_runs_on_a_tiny_set(utkface_dir, cache_dir, tmp_path, checkpoint):
    speed = load("speed")
    out = tmp_path / "speed.md"
    assert speed.main(["--data_dir", str(utkface_dir), "--backbone_weights", "none", "--image_size", "32",
                       "--cache_dir", str(cache_dir), "--num_workers", "0", "--raw_batches", "1",
                       "--pipeline_images", "20", "--uncached_batches", "2", "--accelerator", "cpu",
                       "--checkpoint", str(checkpoint), "--latency_repeats", "2", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["rows"][0]["precision"] == "32-true" and results["rows"][0]["raw_img_s"] > 0
    # the default recipe's cut: VGG16 up to block 4 has 13.96 GMAC at 224 px, (32/224)^2 of that at 32 px
    assert results["layer"] == "block4" and results["gmacs_per_image"] == pytest.approx(13.959 * (32 / 224) ** 2,
                                                                                        rel=1e-3)
    assert results["cached_epoch"]["batches"] == 1  # 50 training images, the recipe's batch of 64
    assert results["latency"][0]["backend"] == "torch" and results["latency"][0]["median_ms"] > 0
    assert "img/s" in out.read_text() and "One photo through the predictor" in out.read_text()


def test_speed_benchmark_measures_int8_raw_build_and_a_cached_epoch_on_int8_features(utkface_dir, cache_dir,
                                                                                      tmp_path):
    pytest.importorskip("onnxruntime", reason="int8 needs the onnx extra")
    speed = load("speed")
    out = tmp_path / "speed.md"
    assert speed.main(["--data_dir", str(utkface_dir), "--backbone_weights", "none", "--image_size", "32",
                       "--cache_dir", str(cache_dir), "--num_workers", "0", "--raw_batches", "1",
                       "--pipeline_images", "20", "--accelerator", "cpu", "--precisions", "int8",
                       "--skip", "uncached", "--cached_precision", "int8", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    row = results["rows"][0]
    assert row["precision"] == "int8" and row["raw_img_s"] > 0 and row["pipeline_img_s"] > 0
    # the heads train on int8 features (a cache built first) in the native precision, as a first run without AMX
    cached = results["cached_epoch"]
    assert cached["feature_precision"] == "int8" and cached["precision"] == speed.Hardware.of("cpu").native_precision
    assert cached["batches"] == 1 and cached["train_s"] > 0
    assert list((cache_dir / "features").glob("*.npy")) and list((cache_dir / "int8").glob("*.onnx"))
    assert "| int8 |" in out.read_text() and "Cached epoch (int8 features" in out.read_text()


def _cpuid_can_fault() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " cpuid_fault" in flags and shutil.which("cc") is not None


@pytest.mark.skipif(not _cpuid_can_fault(), reason="needs Linux on a CPU with CPUID faulting and a C compiler")
def test_avx2_only_makes_the_libraries_see_an_avx2_cpu_and_keeps_real_crashes():
    avx2_only = ["bash", str(REPO / "benchmarks" / "avx2_only" / "run.sh"), sys.executable, "-c"]
    probe = ("import torch; print(torch.backends.cpu.get_cpu_capability(), torch.cpu._is_avx512_bf16_supported(), "
             "torch.cpu._is_amx_tile_supported())")
    seen = subprocess.run(avx2_only + [probe], capture_output=True, text=True, timeout=300, check=True)
    assert seen.stdout.split() == ["AVX2", "False", "False"]
    crash = subprocess.run(avx2_only + ["import ctypes; ctypes.string_at(0)"], capture_output=True, timeout=60)
    assert crash.returncode == 128 + 11  # a real segmentation fault still ends the program


def test_serve_benchmark_builds_valid_requests(tmp_path):
    """The load test's pieces (the server runs are measured by hand: README "Serving")."""
    import io

    from PIL import Image

    serve = load("serve")
    photo = serve.megapixel_photo(Image.new("RGB", (200, 200), (200, 150, 120)))
    assert photo.size == (1000, 1000)
    body = serve.multipart(serve.jpeg(photo))
    assert body.startswith(f"--{serve.BOUNDARY}\r\n".encode()) and body.endswith(f"--{serve.BOUNDARY}--\r\n".encode())
    start = body.index(b"\r\n\r\n") + 4
    with Image.open(io.BytesIO(body[start:body.rindex(b"\r\n--")])) as decoded:
        assert decoded.size == (1000, 1000)


def test_cpu_backends_benchmark_compares_features_and_decisions(trained_run, checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    backends = load("cpu_backends")
    out = tmp_path / "backends.md"
    assert backends.main(["--checkpoint", str(checkpoint), "--split_file", str(trained_run / "split.json"),
                          "--data_dir", str(trained_run.parents[2] / "UTKFace"), "--sizes", "32",
                          "--images", "5", "--calibration_images", "8", "--batch_size", "4", "--batches", "1",
                          "--backends", "torch-fp32", "ort-fp32", "ort-int8", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert [row["backend"] for row in results["throughput"]] == ["torch-fp32", "ort-fp32", "ort-int8"]
    decisions = {row["backend"]: row for row in results["decisions"]}
    assert decisions["torch-fp32"]["relative_error_mean"] == 0 and decisions["torch-fp32"]["same_decision"] == 1
    assert decisions["ort-fp32"]["relative_error_max"] < 1e-4  # the exported backbone computes the same features
    assert 0 < decisions["ort-int8"]["relative_error_mean"] < 0.5  # quantized: close, not equal
    assert "| ort-int8 |" in out.read_text()


def test_small_degradations_move_or_enlarge_the_face_and_keep_its_size():
    import numpy as np
    from PIL import Image

    degradations = load("degradations")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    moved = np.asarray(degradations.shifted(Image.fromarray(pixels), 2))
    assert (moved[2:, 2:] == pixels[:-2, :-2]).all()  # whole pixels: nothing resampled
    assert (moved[:2, 2:] == pixels[:1, :-2]).all() and (moved[2:, :2] == pixels[:-2, :1]).all()  # edge repeated
    line = np.zeros((200, 200, 3), dtype=np.uint8)
    line[:, 150] = 255  # 50 px right of the centre: 51.5 px after enlarging by 3 %
    column = np.asarray(degradations.enlarged(Image.fromarray(line), 1.03))[100, :, 0].astype(float)
    assert 151 < (column * np.arange(200)).sum() / column.sum() < 152
    for name in degradations.SMALL:
        changed = degradations.DEGRADATIONS[name](Image.fromarray(pixels))
        assert changed.size == (200, 200) and changed.mode == "RGB", name
