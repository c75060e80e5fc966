"""Speed benchmark for the frozen-feature pipeline (issue: frozen-feature cache).

Measures, in one run on one machine:

1. raw VGG16 conv-base throughput (synthetic tensors, inference mode, channels_last) in fp32 and - where the CPU or
   GPU runs it natively - bf16 autocast;
2. the cache-building pipeline on real images (JPEG decoding in DataLoader workers + the same forward pass), as
   img/s and as a fraction of (1);
3. one cached training epoch (+ validation) of the notebook head at batch 32 on the full data set;
4. the seed-style cost: the backbone on every image every epoch, from the measured time of a few uncached steps.

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

from project.data.sources import resolve_data_dir  # noqa: E402
from project.data.feature_cache import FeatureCacheBuilder  # noqa: E402
from project.data.scan import scan_utkface  # noqa: E402
from project.models.backbone import build_backbone  # noqa: E402
from project.models.net import AgeNet  # noqa: E402
from project.precision import autocast_dtype, native_precision  # noqa: E402
from project.recipes import NOTEBOOK  # noqa: E402
from project.settings import DataSettings, default_cache_dir  # noqa: E402
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
    return f"{model}, {torch.get_num_threads()} threads, {flags}"


def raw_throughput(backbone, device, precision: str, batch_size: int, batches: int, image_size: int) -> float:
    """img/s of the conv base alone on random input (no decoding, no copies to disk)."""
    backbone = backbone.to(device)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    dtype = autocast_dtype(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
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


def epoch_times(args, device, precision: str, cached: bool, limit_batches=None):
    """(train epoch s, val s, train batches) of the real head training, cached or backbone-every-step."""
    pl.seed_everything(0, verbose=False)
    net = AgeNet(replace(NOTEBOOK.net, input=replace(NOTEBOOK.net.input, image_size=args.image_size)),
                 build_backbone(args.backbone_weights))
    model = LitClassifier(net, NOTEBOOK.optimizer, NOTEBOOK.objective)
    data = DataSettings(data_dir=Path(args.data_dir), cache_dir=Path(args.cache_dir), batch_size=args.batch_size,
                        seed=42, num_workers=args.num_workers, split_file=None, strict_data=False,
                        feature_cache=cached)
    dm = build_datamodule(data, net, precision)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=1, accelerator=device.type if device.type == "cpu" else "gpu", devices=1,
                         precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer, FastTrainingAllocator()], num_sanity_val_steps=0,
                         limit_train_batches=limit_batches, limit_val_batches=0 if limit_batches else None)
    trainer.fit(model, datamodule=dm)
    batches = trainer.num_training_batches
    full_batches = -(-len(dm.split.indices["train"]) // args.batch_size)
    return timer.train[0], (timer.val[0] if timer.val else None), batches, full_batches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--backbone_weights", default="imagenet")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--cache_dir", default=str(default_cache_dir()))
    parser.add_argument("--raw_batches", type=int, default=6, help="timed batches of 16 for the raw throughput")
    parser.add_argument("--pipeline_images", type=int, default=1200, help="real images for the pipeline throughput")
    parser.add_argument("--uncached_batches", type=int, default=8, help="timed steps of the backbone-every-step run")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--skip", nargs="*", default=[], choices=("raw", "pipeline", "cached", "uncached"))
    parser.add_argument("--out", default=None, help="also write the results (JSON next to it) here")
    args = parser.parse_args(argv)

    use_cuda = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    best = native_precision(device.type)
    precisions = ["32-true"] + ([best] if best != "32-true" else [])
    backbone = build_backbone(args.backbone_weights)
    root = resolve_data_dir(args.data_dir, Path(args.cache_dir))
    items = scan_utkface(root).items
    results = {"machine": machine_name(device), "torch": torch.__version__, "images": len(items), "rows": []}
    print(f"# {results['machine']} | torch {torch.__version__} | {len(items)} images", flush=True)

    for precision in precisions:
        row = {"precision": precision}
        if "raw" not in args.skip:
            row["raw_img_s"] = raw_throughput(backbone, device, precision, 16, args.raw_batches, args.image_size)
        if "pipeline" not in args.skip:
            subset = items[:: max(1, len(items) // args.pipeline_images)][: args.pipeline_images]
            row["pipeline_img_s"] = pipeline_throughput(backbone, device, precision, root, subset, args.image_size,
                                                        args.num_workers, args.batch_size)
        if "raw_img_s" in row and "pipeline_img_s" in row:
            row["pipeline_fraction"] = row["pipeline_img_s"] / row["raw_img_s"]
        print(json.dumps(row), flush=True)
        results["rows"].append(row)

    if "cached" not in args.skip:
        train_s, val_s, batches, _ = epoch_times(args, device, best, cached=True)
        results["cached_epoch"] = {"precision": best, "train_s": train_s, "val_s": val_s, "batches": batches}
        print(json.dumps(results["cached_epoch"]), flush=True)
    if "uncached" not in args.skip:
        train_s, _, batches, full = epoch_times(args, device, best, cached=False, limit_batches=args.uncached_batches)
        per_batch = train_s / batches
        results["uncached_epoch"] = {"precision": best, "seconds_per_batch": per_batch, "timed_batches": batches,
                                     "estimated_train_epoch_s": per_batch * full}
        print(json.dumps(results["uncached_epoch"]), flush=True)

    lines = [f"Machine: {results['machine']}; torch {results['torch']}; {results['images']} images at "
             f"{args.image_size} px.", "",
             "| precision | raw conv base (img/s) | cache build, real JPEGs (img/s) | build / raw |",
             "|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['precision']} | {row.get('raw_img_s', float('nan')):.1f} | "
                     f"{row.get('pipeline_img_s', float('nan')):.1f} | "
                     f"{row.get('pipeline_fraction', float('nan')):.0%} |")
    if "cached_epoch" in results:
        c = results["cached_epoch"]
        lines.append(f"\nCached epoch ({c['precision']}, batch {args.batch_size}, {c['batches']} steps): "
                     f"train {c['train_s']:.1f} s + validation {c['val_s'] or 0:.1f} s.")
    if "uncached_epoch" in results:
        u = results["uncached_epoch"]
        lines.append(f"Backbone every step ({u['precision']}): {u['seconds_per_batch']:.2f} s per batch of "
                     f"{args.batch_size} -> about {u['estimated_train_epoch_s'] / 60:.0f} min per training epoch.")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
