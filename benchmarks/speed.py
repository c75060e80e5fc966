"""Speed benchmark for the frozen-feature pipeline (issue: frozen-feature cache).

Measures, in one run on one machine:

1. raw VGG16 conv-base throughput (synthetic tensors, inference mode, channels_last), cut where ``--recipe`` cuts it
   (block 4 for ``default``, block 5 for ``notebook``), in fp32, in bf16 autocast where the CPU or GPU runs it
   natively and in int8 where ``--precision auto`` would use it (``--precisions`` picks others; ``int8``:
   onnxruntime's quantization, calibrated on 256 images outside the timed ones), with the GFLOP/s it reaches
   (multiply-adds counted from the layers);
2. the cache-building pipeline on real images (JPEG decoding in DataLoader workers + the same forward pass), as
   img/s and as a fraction of (1);
3. one cached training epoch (+ validation) of the recipe's head on the full data set, on the features a new run's
   ``--precision auto`` caches (int8 on an x86 CPU without AMX when the onnx extra is installed; else the
   native precision) with the heads in the native precision, as a first run trains them (``--cached_precision``
   picks other features; the cache is built first when it is missing);
4. the seed-style cost: the backbone on every image every epoch, from the measured time of a few uncached steps;
5. with ``--checkpoint``: warm latency of one photo (preprocessing + both views + heads, batch 1) through the
   predictor, per ``--backends``.

Prints a Markdown table (and writes it to ``--out``). Example, on the 2-core CPU with the shared files:

    python benchmarks/speed.py --data_dir ../shared/data/UTKFace.tar.gz \
        --backbone_weights ../shared/weights/vgg16_features_imagenet.pth
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from project.config.precision import CHOICES as PRECISION_CHOICES  # noqa: E402
from project.config.precision import Hardware, autocast_dtype, choose_precision  # noqa: E402
from project.config.recipes import RECIPES  # noqa: E402
from project.config.settings import DataSettings, default_cache_dir  # noqa: E402
from project.data.feature_cache import FeatureCacheBuilder  # noqa: E402
from project.data.scan import scan_utkface  # noqa: E402
from project.data.sources import resolve_data_dir  # noqa: E402
from project.models.backbone import build_backbone  # noqa: E402
from project.models.net import AgeNet  # noqa: E402
from project.models.quantized import Int8Features  # noqa: E402
from project.models.quantized import is_available as int8_is_available  # noqa: E402
from project.training.callbacks import FastTrainingAllocator  # noqa: E402
from project.training.module import LitClassifier  # noqa: E402
from project.training.run import build_datamodule  # noqa: E402


def machine_name(device: torch.device) -> str:
    """The CPU model (and bf16 support) or the GPU name: every figure says where it came from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    flags = "AVX-512-bf16" if torch.cpu._is_avx512_bf16_supported() else "no native bf16"
    if torch.cpu._is_amx_tile_supported():
        flags += " + AMX"
    # the instruction set torch's kernels use: AVX2 on an AVX-512 CPU under benchmarks/avx2_only
    return f"{model}, {torch.get_num_threads()} threads, {flags}, {torch.backends.cpu.get_cpu_capability()} kernels"


def conv_gmacs(backbone: torch.nn.Module, image_size: int) -> float:
    """Multiply-adds (G) of one image through the backbone's convolutions, counted while it runs on a dummy image."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups

    hooks = [m.register_forward_hook(count) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            backbone(torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return total / 1e9


def raw_throughput(backbone, device, precision: str, batch_size: int, batches: int, image_size: int) -> float:
    """img/s of the conv base alone on random input (no decoding, no copies to disk)."""
    backbone = backbone.to(device)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    dtype = autocast_dtype(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(2 if device.type == "cuda" else 1):
            backbone(images)  # warm-up: oneDNN / cuDNN pick their kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            backbone(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch_size * batches / (time.perf_counter() - start)


def pipeline_throughput(backbone, device, precision, root, items, image_size, workers, batch_size) -> float:
    """img/s of the real cache build (decode in workers + forward + write) on ``items``."""
    with tempfile.TemporaryDirectory() as cache:
        builder = FeatureCacheBuilder(backbone, precision, Path(cache), batch_size=batch_size, num_workers=workers,
                                      progress=False)
        builder.build(root, items, image_size, device=device)
        return builder.last_build_stats["images_per_second"]


def encoder_for(backbone, precision: str, root, calibration_items, image_size: int, work: Path):
    """The backbone, or for ``int8`` its quantization calibrated on ``calibration_items``."""
    if precision != "int8":
        return backbone
    encoder = Int8Features(backbone, work)
    FeatureCacheBuilder(encoder, precision, work, num_workers=0, progress=False).calibrate(
        root, calibration_items, image_size)
    return encoder


class EpochTimer(Callback):
    """Wall time of each training epoch and each validation run."""

    def __init__(self) -> None:
        self.train, self.val = [], []

    def on_train_epoch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, *args):
        self.train.append(time.perf_counter() - self._t)

    def on_validation_epoch_start(self, *args):
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, *args):
        self.val.append(time.perf_counter() - self._v)


def epoch_times(args, device, precision: str, cached: bool, limit_batches=None, feature_precision=None):
    """(train epoch s, val s, train batches) of the real head training in ``precision``, cached (features in
    ``feature_precision``, default ``precision``) or backbone-every-step."""
    pl.seed_everything(0, verbose=False)
    recipe = RECIPES[args.recipe]
    net = AgeNet(replace(recipe.net, input=replace(recipe.net.input, image_size=args.image_size)),
                 build_backbone(args.backbone_weights, recipe.net.input.feature_layer))
    model = LitClassifier(net, recipe.optimizer, recipe.objective)
    data = DataSettings(data_dir=Path(args.data_dir), cache_dir=Path(args.cache_dir), batch_size=args.batch_size,
                        seed=42, num_workers=args.num_workers, split_file=None, strict_data=False,
                        feature_cache=cached)
    dm = build_datamodule(data, net, feature_precision or precision)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=1, accelerator=device.type if device.type == "cpu" else "gpu", devices=1,
                         precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer, FastTrainingAllocator()], num_sanity_val_steps=0,
                         limit_train_batches=limit_batches, limit_val_batches=0 if limit_batches else None)
    trainer.fit(model, datamodule=dm)
    batches = trainer.num_training_batches
    full_batches = -(-len(dm.split.indices["train"]) // args.batch_size)
    return timer.train[0], (timer.val[0] if timer.val else None), batches, full_batches


def predict_latency(checkpoint: str, device: torch.device, backend: str, image, repeats: int) -> dict:
    """Median and best wall time (ms) of one photo through the predictor, after warm-up calls."""
    from project.inference.predictor import AgeGroupPredictor

    predictor = AgeGroupPredictor.from_checkpoint(checkpoint, device=device if backend == "torch" else "cpu",
                                                  backend=backend)
    for _ in range(3):
        predictor.predict(image, batch_size=1, face_detector=None)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.predict(image, batch_size=1, face_detector=None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"backend": backend, "device": str(device) if backend == "torch" else "cpu",
            "median_ms": times[len(times) // 2], "best_ms": times[0], "repeats": repeats}


def measure_precisions(args, precisions, results, backbone, device, gmacs, root, subset, calibration, work):
    """Raw and pipeline img/s of each precision (int8 calibrated on ``calibration``, never the timed images)."""
    for precision in precisions:
        row = {"precision": precision}
        encoder = encoder_for(backbone, precision, root, calibration, args.image_size, work)
        if "raw" not in args.skip:
            row["raw_img_s"] = raw_throughput(encoder, device, precision, args.raw_batch_size, args.raw_batches,
                                              args.image_size)
            row["raw_gflop_s"] = row["raw_img_s"] * 2 * gmacs
        if "pipeline" not in args.skip:
            row["pipeline_img_s"] = pipeline_throughput(encoder, device, precision, root, subset, args.image_size,
                                                        args.num_workers, args.batch_size)
        if "raw_img_s" in row and "pipeline_img_s" in row:
            row["pipeline_fraction"] = row["pipeline_img_s"] / row["raw_img_s"]
        print(json.dumps(row), flush=True)
        results["rows"].append(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--backbone_weights", default="imagenet")
    parser.add_argument("--image_size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES),
                        help="whose backbone cut, head and batch size are measured")
    parser.add_argument("--batch_size", type=int, default=None, help="training / extraction batch (recipe's)")
    parser.add_argument("--raw_batch_size", type=int, default=16, help="batch of the raw throughput")
    parser.add_argument("--precisions", nargs="*", default=None,
                        help="feature precisions to measure (default: 32-true, the device's native one and "
                             "what auto's features are: int8 on an x86 CPU without AMX)")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint: also time one-photo prediction")
    parser.add_argument("--backends", nargs="*", default=["torch"], choices=("torch", "onnx"))
    parser.add_argument("--latency_repeats", type=int, default=20)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--cache_dir", default=str(default_cache_dir()))
    parser.add_argument("--raw_batches", type=int, default=6, help="timed batches of 16 for the raw throughput")
    parser.add_argument("--pipeline_images", type=int, default=1200, help="real images for the pipeline throughput")
    parser.add_argument("--uncached_batches", type=int, default=8, help="timed steps of the backbone-every-step run")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--cached_precision", default="auto", choices=PRECISION_CHOICES,
                        help="features of the cached epoch, read as the CLI's --precision reads it (auto: what a new "
                             "run caches); the heads train in the native precision")
    parser.add_argument("--skip", nargs="*", default=[], choices=("raw", "pipeline", "cached", "uncached"))
    parser.add_argument("--out", default=None, help="also write the results (JSON next to it) here")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = RECIPES[args.recipe].batch_size
    if args.image_size is None:
        args.image_size = RECIPES[args.recipe].net.input.image_size

    use_cuda = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    hardware = Hardware.of(device.type)
    best = hardware.native_precision
    auto_features = choose_precision("auto", hardware, int8_available=int8_is_available).features
    precisions = args.precisions or list(dict.fromkeys(["32-true", best, auto_features]))
    layer = RECIPES[args.recipe].net.input.feature_layer
    backbone = build_backbone(args.backbone_weights, layer)
    gmacs = conv_gmacs(backbone, args.image_size)
    root = resolve_data_dir(args.data_dir, Path(args.cache_dir))
    items = scan_utkface(root).items
    results = {"machine": machine_name(device), "torch": torch.__version__, "images": len(items), "layer": layer,
               "gmacs_per_image": gmacs, "rows": []}
    print(f"# {results['machine']} | torch {torch.__version__} | {len(items)} images | {layer}: {gmacs:.2f} GMAC "
          f"per {args.image_size} px image", flush=True)

    subset = items[:: max(1, len(items) // args.pipeline_images)][: args.pipeline_images]
    timed = {item.relpath for item in subset}
    calibration = [item for item in items if item.relpath not in timed][:: max(1, len(items) // 256)][:256]
    if not {"raw", "pipeline"} <= set(args.skip):  # (int8 would be quantized for nothing)
        with tempfile.TemporaryDirectory() as work:
            measure_precisions(args, precisions, results, backbone, device, gmacs, root, subset, calibration,
                               Path(work))

    if "cached" not in args.skip:
        features = choose_precision(args.cached_precision, hardware, int8_available=int8_is_available).features
        train_s, val_s, batches, _ = epoch_times(args, device, best, cached=True, feature_precision=features)
        results["cached_epoch"] = {"precision": best, "feature_precision": features, "train_s": train_s,
                                   "val_s": val_s, "batches": batches}
        print(json.dumps(results["cached_epoch"]), flush=True)
    if "uncached" not in args.skip:
        train_s, _, batches, full = epoch_times(args, device, best, cached=False, limit_batches=args.uncached_batches)
        per_batch = train_s / batches
        results["uncached_epoch"] = {"precision": best, "seconds_per_batch": per_batch, "timed_batches": batches,
                                     "estimated_train_epoch_s": per_batch * full}
        print(json.dumps(results["uncached_epoch"]), flush=True)
    if args.checkpoint:
        from PIL import Image

        photo = Image.open(root / items[0].relpath).convert("RGB")
        results["latency"] = [predict_latency(args.checkpoint, device, backend, photo, args.latency_repeats)
                              for backend in args.backends]
        for latency in results["latency"]:
            print(json.dumps(latency), flush=True)

    measured = [row for row in results["rows"] if len(row) > 1]
    lines = [f"Machine: {results['machine']}; torch {results['torch']}; {results['images']} images at "
             f"{args.image_size} px; recipe {args.recipe} ({layer}: {gmacs:.2f} GMAC = {2 * gmacs:.1f} GFLOP "
             f"per image).", ""]
    if measured:
        lines += [f"| precision | raw conv base, batch {args.raw_batch_size} (img/s) | GFLOP/s | cache build, real "
                  f"JPEGs, batch {args.batch_size} (img/s) | build / raw |", "|---|---|---|---|---|"]
    for row in measured:
        lines.append(f"| {row['precision']} | {row.get('raw_img_s', float('nan')):.1f} | "
                     f"{row.get('raw_gflop_s', float('nan')):.0f} | {row.get('pipeline_img_s', float('nan')):.1f} | "
                     f"{row.get('pipeline_fraction', float('nan')):.0%} |")
    if "cached_epoch" in results:
        c = results["cached_epoch"]
        lines.append(f"\nCached epoch ({c['feature_precision']} features, heads in {c['precision']}, batch "
                     f"{args.batch_size}, {c['batches']} steps): "
                     f"train {c['train_s']:.1f} s + validation {c['val_s'] or 0:.1f} s.")
    if "uncached_epoch" in results:
        u = results["uncached_epoch"]
        lines.append(f"Backbone every step ({u['precision']}): {u['seconds_per_batch']:.2f} s per batch of "
                     f"{args.batch_size} -> about {u['estimated_train_epoch_s'] / 60:.0f} min per training epoch.")
    for latency in results.get("latency", []):
        lines.append(f"One photo through the predictor ({latency['backend']} on {latency['device']}, warm, batch 1): "
                     f"median {latency['median_ms']:.1f} ms, best {latency['best_ms']:.1f} ms of "
                     f"{latency['repeats']}.")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
