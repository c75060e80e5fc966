"""Which of a photo's degradations changes a model's predicted group: one at a time, on held-out test chips.

    python benchmarks/degradations.py --ckpt best.ckpt --data_dir ../shared/data/UTKFace.tar.gz --chips 400

Each of ``--chips`` test-split chips of the checkpoint's run (drawn with seed 0) is predicted as it is and after one
degradation of the kind the faces benchmark's scenes apply together (``benchmarks/faces.py``): brightness scaled,
a JPEG round trip, the face scaled down to a smaller side and back up to the chip's size, or turned and turned back
(two bicubic resamplings, as a pasted turned face that is aligned again); and the smallest of each kind, which no
person would notice: brightness +-10 %, a JPEG of quality 90, a turn of 5 degrees and back, the face moved by 2 pixels
(1 % of its side; no resampling) or enlarged by 3 %. Reported per degradation: the share of chips whose group is
unchanged ("same group") and the accuracy against the true group; for the small ones also the share that any of them
changes: chips whose group hangs on a detail that small cannot be expected to keep it in a photo.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.faces import test_chips  # noqa: E402
from project.config.precision import cpu_has_native_bf16  # noqa: E402
from project.core.age_groups import age_to_group  # noqa: E402
from project.inference.predictor import AgeGroupPredictor  # noqa: E402


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def scaled(image: Image.Image, side: int) -> Image.Image:
    return image.resize((side, side), Image.LANCZOS).resize(image.size, Image.BICUBIC)


def turned_and_back(image: Image.Image, angle: float) -> Image.Image:
    big = image.rotate(angle, resample=Image.BICUBIC, expand=True).rotate(-angle, resample=Image.BICUBIC)
    left = (big.width - image.width) // 2
    return big.crop((left, left, left + image.width, left + image.height))


def shifted(image: Image.Image, pixels: int) -> Image.Image:
    """The image moved right and down by whole ``pixels`` (no resampling), the uncovered edge repeated."""
    padded = np.pad(np.asarray(image), ((pixels, 0), (pixels, 0), (0, 0)), mode="edge")
    return Image.fromarray(padded[:image.height, :image.width])


def enlarged(image: Image.Image, factor: float) -> Image.Image:
    """The image enlarged by ``factor`` about its centre, at its own size (bicubic)."""
    cx, cy = image.width / 2, image.height / 2
    return image.transform(image.size, Image.AFFINE, (1 / factor, 0, cx - cx / factor, 0, 1 / factor, cy - cy / factor),
                           resample=Image.BICUBIC)


DEGRADATIONS = {
    "brightness x0.6": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "brightness x0.8": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "brightness x1.2": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness x1.4": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "JPEG quality 40": lambda im: jpeg(im, 40),
    "JPEG quality 70": lambda im: jpeg(im, 70),
    "face 40 px": lambda im: scaled(im, 40),
    "face 60 px": lambda im: scaled(im, 60),
    "face 100 px": lambda im: scaled(im, 100),
    "turned 20 deg and back": lambda im: turned_and_back(im, 20),
    "brightness x0.9": lambda im: ImageEnhance.Brightness(im).enhance(0.9),
    "brightness x1.1": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "JPEG quality 90": lambda im: jpeg(im, 90),
    "turned 5 deg and back": lambda im: turned_and_back(im, 5),
    "moved 2 px": lambda im: shifted(im, 2),
    "enlarged 3 %": lambda im: enlarged(im, 1.03),
}
#: Changes too small for a person to notice: the smallest of each kind, a move and a zoom within the aligner's error.
SMALL = ("brightness x0.9", "brightness x1.1", "JPEG quality 90", "turned 5 deg and back", "moved 2 px", "enlarged 3 %")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz")
    parser.add_argument("--split_file", default=None, help="the run's split.json (default: beside the checkpoint)")
    parser.add_argument("--chips", type=int, default=400)
    parser.add_argument("--bf16", action="store_true",
                        help="the backbone in bf16 autocast (CPUs with AVX-512-bf16 or AMX only): 3-4x faster on "
                             "an AMX Xeon; a few borderline chips may get another group than in fp32")
    args = parser.parse_args(argv)
    if args.bf16 and not cpu_has_native_bf16():
        parser.error("--bf16 needs a CPU with AVX-512-bf16 or AMX (on this one bf16 is emulated and slower than fp32)")
    checkpoint = Path(args.ckpt)
    split_file = Path(args.split_file) if args.split_file else checkpoint.resolve().parent.parent / "split.json"
    chips = test_chips(Path(args.data_dir), split_file)
    picked = np.random.default_rng(0).choice(len(chips), min(args.chips, len(chips)), replace=False)
    images = [chips[i][0] for i in picked]
    truth = np.array([age_to_group(chips[i][1]) for i in picked])
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint, device="cpu")

    def groups(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return np.array([p.group_index for p in predictor.predict(batch, face_detector=None)])

    clean = groups(images)
    print(f"{len(images)} test chips, accuracy as they are: {np.mean(clean == truth):.1%}", flush=True)
    print("| degradation | same group | accuracy |\n|---|---|---|")
    changed_by_small = np.zeros(len(images), dtype=bool)
    for name, degrade in DEGRADATIONS.items():
        seen = groups([degrade(image) for image in images])
        print(f"| {name} | {np.mean(seen == clean):.1%} | {np.mean(seen == truth):.1%} |", flush=True)
        if name in SMALL:
            changed_by_small |= seen != clean
    print(f"| any of the {len(SMALL)} small ones ({', '.join(SMALL)}) | {1 - np.mean(changed_by_small):.1%} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
