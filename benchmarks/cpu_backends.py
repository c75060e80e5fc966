"""CPU backends for the frozen features: how fast each runs the backbone and what it does to the decisions.

    python benchmarks/cpu_backends.py --checkpoint best.ckpt --split_file split.json \
        --data_dir ../shared/data/UTKFace.tar.gz --out results/cpu_backends.md

For each backend - torch fp32 (channels_last, the exact reference), torch bf16 autocast (where the CPU runs it
natively), onnxruntime fp32, onnxruntime int8 (static post-training quantization, QDQ, per-channel weights,
calibrated on training-split images only), OpenVINO fp32 (and bf16 where native) when ``openvino`` is installed -
it measures:

1. raw throughput of the checkpoint's backbone (img/s at ``--batch_size``, each ``--sizes`` side; GFLOP/s from the
   counted multiply-adds) with the threads this process has;
2. at the checkpoint's own image size, on ``--images`` validation-split images (both views): the features' relative
   L2 error against torch fp32, and the checkpoint's trained heads run on each backend's features - the share of
   decisions equal to the fp32 features' and the accuracy.

(2) uses heads trained on the checkpoint's features, so it shows what a backend costs a model that was not trained on
its features (an upper bound on the loss of one that is). Needs ``pip install -e .[onnx]``; OpenVINO is optional.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.config.precision import cpu_has_native_bf16  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.core.transforms import build_transform, load_rgb_image  # noqa: E402
from project.data.scan import scan_utkface  # noqa: E402
from project.data.sources import resolve_data_dir  # noqa: E402
from project.data.split import load_split  # noqa: E402
from project.models.checkpoint import load_trained_net  # noqa: E402
from project.models.quantized import cpu_session, export_backbone, quantize_int8  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from speed import conv_gmacs, machine_name  # noqa: E402

Backend = Callable[[np.ndarray], np.ndarray]  # N x 3 x S x S float32 -> N x C x H x W float32
BACKENDS = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16")


def onnxruntime_backend(model: Path) -> Backend:
    session = cpu_session(model)
    return lambda images: session.run(None, {"images": images})[0]


def openvino_backend(model: Path, precision: str) -> Backend:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    return lambda images: np.array(request.infer({0: images})[0])


def torch_backend(backbone: torch.nn.Module, bf16: bool) -> Backend:
    backbone = backbone.eval().to(memory_format=torch.channels_last)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
            return backbone(x).float().numpy()
    return run


def backends_for(backbone, size: int, work: Path, calibration: np.ndarray, wanted: List[str]) -> Dict[str, Backend]:
    made: Dict[str, Backend] = {}
    onnx_path = None
    for name in wanted:
        if name == "torch-bf16" and not cpu_has_native_bf16():
            continue
        if name.startswith("torch"):
            made[name] = torch_backend(backbone, bf16=name == "torch-bf16")
            continue
        onnx_path = onnx_path or export_backbone(backbone, size, work / f"backbone{size}.onnx")
        if name == "ort-fp32":
            made[name] = onnxruntime_backend(onnx_path)
        elif name == "ort-int8":
            made[name] = onnxruntime_backend(quantize_int8(onnx_path, calibration, work / f"backbone{size}.int8.onnx"))
        elif name.startswith("openvino"):
            try:
                made[name] = openvino_backend(onnx_path, "bf16" if name == "openvino-bf16" else "f32")
            except ImportError:
                print(f"{name}: openvino is not installed, skipped", flush=True)
    return made


def throughput(run: Backend, size: int, batch_size: int, batches: int) -> float:
    images = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
    run(images)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        run(images)
    return batch_size * batches / (time.perf_counter() - start)


def preprocess(root: Path, items, size: int) -> np.ndarray:
    """``items`` through the project's one loading and preprocessing path, as one float32 array."""
    transform = build_transform(size)
    return torch.stack([transform(load_rgb_image(root / item.relpath)) for item in items]).numpy()


def features_of(run: Backend, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained checkpoint (its backbone and heads are used)")
    parser.add_argument("--split_file", required=True, help="the checkpoint run's split.json")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--cache_dir", default=str(default_cache_dir()))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 200])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per backend and size")
    parser.add_argument("--images", type=int, default=400, help="validation images for the decision check")
    parser.add_argument("--calibration_images", type=int, default=256, help="training images for int8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # torch fp32 is the reference every other backend's features and decisions are compared with: always first
    args.backends = ["torch-fp32"] + [name for name in dict.fromkeys(args.backends) if name != "torch-fp32"]

    trained = load_trained_net(args.checkpoint, device=torch.device("cpu"))
    net, own_size = trained.net.eval(), trained.image_size
    root = resolve_data_dir(Path(args.data_dir), Path(args.cache_dir))
    items = scan_utkface(root).items
    split = load_split(args.split_file, items, np.arange(len(items)), root)
    pick = np.random.default_rng(0)
    calibration_items = [items[i] for i in pick.choice(split.indices["train"], args.calibration_images, False)]
    val_indices = pick.choice(split.indices["val"], min(args.images, len(split.indices["val"])), False)
    results = {"machine": machine_name(torch.device("cpu")), "torch": torch.__version__, "checkpoint": args.checkpoint,
               "validation_images": len(val_indices), "throughput": [], "decisions": []}
    print(f"# {results['machine']}", flush=True)
    truth = np.array([items[i].group for i in val_indices])
    features: Dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            gmacs = conv_gmacs(net.backbone, size)
            calibration = preprocess(root, calibration_items, size)
            for name, run in backends_for(net.backbone, size, Path(work), calibration, args.backends).items():
                rate = throughput(run, size, args.batch_size, args.batches)
                row = {"backend": name, "size": size, "img_s": rate, "gflop_s": rate * 2 * gmacs}
                results["throughput"].append(row)
                print(json.dumps(row), flush=True)
                if size == own_size:
                    views = net.views(torch.from_numpy(preprocess(root, [items[i] for i in val_indices], size)))
                    features[name] = features_of(run, views.flatten(0, 1).numpy(), args.batch_size)
                    shape = views.shape[:2]
    reference = features["torch-fp32"]
    fp32_decisions = None
    for name, rows in features.items():
        with torch.inference_mode():
            decisions = net.forward_features(torch.from_numpy(rows).unflatten(0, shape)).argmax(1).numpy()
        fp32_decisions = decisions if fp32_decisions is None else fp32_decisions
        error = np.linalg.norm((rows - reference).reshape(len(rows), -1), axis=1) / np.linalg.norm(
            reference.reshape(len(rows), -1), axis=1)
        row = {"backend": name, "size": own_size, "relative_error_mean": float(error.mean()),
               "relative_error_max": float(error.max()), "same_decision": float((decisions == fp32_decisions).mean()),
               "accuracy": float((decisions == truth).mean())}
        results["decisions"].append(row)
        print(json.dumps(row), flush=True)

    table = markdown(results, args)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


def markdown(results: dict, args) -> str:
    lines = [f"Machine: {results['machine']}; torch {results['torch']}; batch {args.batch_size}.", "",
             "| backend | " + " | ".join(f"{size} px: img/s (GFLOP/s)" for size in args.sizes) + " |",
             "|---|" + "---|" * len(args.sizes)]
    for name in dict.fromkeys(row["backend"] for row in results["throughput"]):
        cells = []
        for size in args.sizes:
            row = next((r for r in results["throughput"] if r["backend"] == name and r["size"] == size), None)
            cells.append(f"{row['img_s']:.1f} ({row['gflop_s']:.0f})" if row else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"The checkpoint's heads on each backend's features, {results['validation_images']} validation "
              "images, both views:", "",
              "| backend | feature error vs fp32: mean (max) | same decision as fp32 | accuracy |", "|---|---|---|---|"]
    for row in results["decisions"]:
        lines.append(f"| {row['backend']} | {row['relative_error_mean']:.2%} ({row['relative_error_max']:.2%}) | "
                     f"{row['same_decision']:.1%} | {row['accuracy']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
