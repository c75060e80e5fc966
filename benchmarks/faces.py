"""Face detectors in the wild, measured on scenes built from UTKFace's held-out test chips only.

    python benchmarks/faces.py --ckpt runs/.../checkpoints/best.ckpt --data_dir ../shared/data/UTKFace.tar.gz \
        --out results/faces.md

Each scene (about 1 megapixel) holds 1-4 test-split chips (the checkpoint's ``split.json``, never a training face),
pasted at a random size (chip side 40-400 px, log-uniform), position, in-plane rotation (+-30 degrees) and
brightness, on a background of blurred other test chips, noise or a gradient, saved as JPEG at a random quality;
seeded and reproducible. For every detector it reports detection recall and precision (the detected chip's box
against the pasted chip's, IoU >= 0.5), the share of found faces whose predicted group equals the group predicted
from the original chip, accuracy against the true group (found faces, and the original chips of the same faces),
and detection + alignment time per megapixel on this CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve import machine_name  # noqa: E402
from project.core.age_groups import age_to_group  # noqa: E402
from project.data.scan import parse_name  # noqa: E402
from project.inference.detectors import make_face_detector  # noqa: E402
from project.inference.predictor import AgeGroupPredictor  # noqa: E402

MIN_CHIP, MAX_CHIP = 40, 400
MAX_ANGLE = 30.0
#: recall and agreement are also reported for faces at least this large (chip side, pixels)
LARGE_CHIP = 80
#: and recall for faces turned at least this far (degrees)
TURNED = 15


@dataclass
class PastedFace:
    """A chip in a scene: its axis-aligned square (centre and side) and the chip itself with its true age."""

    centre: Tuple[float, float]
    side: float
    angle: float
    chip: Image.Image
    age: int

    def box(self) -> Tuple[float, float, float, float]:
        return (self.centre[0] - self.side / 2, self.centre[1] - self.side / 2, self.side, self.side)


def test_chips(archive: Path, split_file: Path) -> List[Tuple[Image.Image, int]]:
    """Every test-split chip of the run with its age, read into memory only."""
    names = set(json.loads(split_file.read_text())["test"])
    chips = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name in names:
                chip = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                chips.append((chip, parse_name(Path(member.name).name)[0]))
    return chips


def background(rng: np.random.Generator, size: Tuple[int, int], chips) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:  # other faces blurred beyond recognition (a crowd out of focus), so none counts as a face
        tiles = Image.new("RGB", size)
        for x in range(0, size[0], 200):
            for y in range(0, size[1], 200):
                tiles.paste(chips[rng.integers(len(chips))][0], (x, y))
        return tiles.filter(ImageFilter.GaussianBlur(20))
    if kind == 1:  # noise
        noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        return Image.fromarray(noise).resize(size, Image.BILINEAR)
    colour = rng.integers(0, 256, 3)
    ramp = np.linspace(0.3, 1.0, size[0])[None, :, None] * colour[None, None, :]
    return Image.fromarray(np.broadcast_to(ramp, (size[1], size[0], 3)).astype(np.uint8))


def make_scene(rng: np.random.Generator, chips) -> Tuple[Image.Image, List[PastedFace]]:
    """One seeded scene of about a megapixel with 1-4 non-overlapping faces."""
    size = (int(rng.integers(1000, 1300)), int(rng.integers(750, 950)))
    scene = background(rng, size, chips)
    faces: List[PastedFace] = []
    for _ in range(int(rng.integers(1, 5))):
        chip, age = chips[rng.integers(len(chips))]
        side = float(math.exp(rng.uniform(math.log(MIN_CHIP), math.log(MAX_CHIP))))
        reach = side * math.sqrt(2) / 2  # a turned chip's corners
        for _attempt in range(30):
            centre = (rng.uniform(reach, size[0] - reach), rng.uniform(reach, size[1] - reach))
            if all(math.dist(centre, f.centre) > reach + f.side * math.sqrt(2) / 2 for f in faces):
                break
        else:
            continue
        angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE)
        scaled = ImageEnhance.Brightness(chip.resize((round(side), round(side)), Image.LANCZOS)).enhance(
            rng.uniform(0.6, 1.4))
        mask = Image.new("L", scaled.size, 255).rotate(angle, resample=Image.BICUBIC, expand=True)
        turned = scaled.rotate(angle, resample=Image.BICUBIC, expand=True)
        scene.paste(turned, (round(centre[0] - turned.width / 2), round(centre[1] - turned.height / 2)), mask)
        faces.append(PastedFace(centre, side, angle, chip, age))
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), faces


def truth_crop(scene: Image.Image, face: PastedFace) -> Image.Image:
    """The pasted chip cut back out of the finished scene with the known place, size and angle: what a perfect
    detector and aligner would give, so the agreement lost to the scene itself (size, brightness, JPEG) is known."""
    reach = face.side  # a square around the turned chip, turned back, then its middle
    x, y = face.centre
    around = scene.crop((round(x - reach), round(y - reach), round(x + reach), round(y + reach)))
    upright = around.rotate(-face.angle, resample=Image.BICUBIC)
    half = face.side / 2
    middle = upright.width / 2
    return upright.crop((round(middle - half), round(middle - half), round(middle + half), round(middle + half)))


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    width = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    height = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = width * height
    return inter / (aw * ah + bw * bh - inter)


def match(found, truths: List[PastedFace], threshold: float = 0.5) -> List[Tuple[int, int]]:
    """Greedy one-to-one pairs (found index, truth index) by IoU, best first."""
    pairs = sorted(((iou(f.box, t.box()), i, j) for i, f in enumerate(found) for j, t in enumerate(truths)),
                   reverse=True)
    used_found, used_truth, matched = set(), set(), []
    for overlap, i, j in pairs:
        if overlap >= threshold and i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
            matched.append((i, j))
    return matched


def measure(spec: str, scenes, predictor: AgeGroupPredictor) -> Dict:
    """Recall, precision, agreement, accuracy and time of the detector ``spec``: a name, or ``name@min_face``."""
    name, _, min_face = spec.partition("@")
    detector = make_face_detector(name, int(min_face) if min_face else None)
    detector.detect(scenes[0][0])  # warm-up
    truths = found_total = matched_total = large_truths = large_matched = 0
    seconds = megapixels = 0.0
    from_scene, from_chip, from_truth, true_groups, large_pairs = [], [], [], [], []
    missed_turned = missed_upright = turned = 0
    for scene, faces in scenes:
        began = time.perf_counter()
        found = detector.detect(scene)
        seconds += time.perf_counter() - began
        megapixels += scene.width * scene.height / 1e6
        pairs = match(found, faces)
        truths += len(faces)
        found_total += len(found)
        matched_total += len(pairs)
        large = {j for j, face in enumerate(faces) if face.side >= LARGE_CHIP}
        large_truths += len(large)
        large_matched += sum(1 for _, j in pairs if j in large)
        for j, face in enumerate(faces):
            is_turned = abs(face.angle) >= TURNED
            turned += is_turned
            if j not in {j for _, j in pairs}:
                missed_turned += is_turned
                missed_upright += not is_turned
        if pairs:
            crops = ([found[i].chip for i, _ in pairs] + [faces[j].chip for _, j in pairs]
                     + [truth_crop(scene, faces[j]) for _, j in pairs])
            groups = [p.group_index for p in predictor.predict(crops, face_detector=None)]
            count = len(pairs)
            from_scene += groups[:count]
            from_chip += groups[count: 2 * count]
            from_truth += groups[2 * count:]
            true_groups += [age_to_group(faces[j].age) for _, j in pairs]
            large_pairs += [j in large for _, j in pairs]
    from_scene, from_chip, from_truth, true_groups, large_pairs = map(
        np.asarray, (from_scene, from_chip, from_truth, true_groups, large_pairs))
    return {"detector": spec, "faces": truths, "found": found_total, "matched": matched_total,
            "recall": matched_total / truths, "recall_large": large_matched / max(1, large_truths),
            "precision": matched_total / max(1, found_total),
            "agreement": float(np.mean(from_scene == from_chip)),
            "agreement_large": float(np.mean((from_scene == from_chip)[large_pairs])),
            "agreement_perfect_crop": float(np.mean(from_truth == from_chip)),
            "recall_upright": 1 - missed_upright / max(1, truths - turned),
            "recall_turned": 1 - missed_turned / max(1, turned),
            "accuracy_found": float(np.mean(from_scene == true_groups)),
            "accuracy_chips_same_faces": float(np.mean(from_chip == true_groups)),
            "ms_per_megapixel": 1000 * seconds / megapixels}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the model whose predictions are compared")
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz")
    parser.add_argument("--split_file", default=None, help="the run's split.json (default: beside the checkpoint)")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", nargs="+", default=["retinaface", "hog", "haar"],
                        help="detector names (retinaface, hog, cnn, haar), each optionally with @MIN_FACE (pixels)")
    parser.add_argument("--out", default=None, help="also write the results as a Markdown table here")
    args = parser.parse_args(argv)

    checkpoint = Path(args.ckpt)
    split_file = Path(args.split_file) if args.split_file else checkpoint.resolve().parent.parent / "split.json"
    chips = test_chips(Path(args.data_dir), split_file)
    rng = np.random.default_rng(args.seed)
    scenes = [make_scene(rng, chips) for _ in range(args.scenes)]
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint, device="cpu")
    rows = []
    for name in args.detectors:
        rows.append(measure(name, scenes, predictor))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        lines = [f"{args.scenes} scenes (seed {args.seed}), {rows[0]['faces']} faces; {machine_name()}, 2 threads", "",
                 f"| detector | recall | recall, faces >= {LARGE_CHIP} px | recall, turned >= {TURNED} deg | precision "
                 f"| same group as the chip | same group, faces >= {LARGE_CHIP} px | accuracy (found faces) "
                 "| accuracy of the same faces' chips | ms per megapixel |", "|---" * 10 + "|"]
        for r in rows:
            lines.append(f"| {r['detector']} | {r['recall']:.1%} | {r['recall_large']:.1%} "
                         f"| {r['recall_turned']:.1%} "
                         f"| {r['precision']:.1%} | {r['agreement']:.1%} | {r['agreement_large']:.1%} "
                         f"| {r['accuracy_found']:.1%} | {r['accuracy_chips_same_faces']:.1%} "
                         f"| {r['ms_per_megapixel']:.0f} |")
        lines += ["", "Same group as the chip when the face is cut out of the scene perfectly (known place, size and "
                  "angle): " + ", ".join(f"{r['detector']}'s faces {r['agreement_perfect_crop']:.1%}" for r in rows)]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
