"""Every face detector on real photographs that ship inside installed packages (scikit-image's sample images).

    python benchmarks/faces_photos.py --ckpt runs/.../checkpoints/best.ckpt --out docs/faces_photos.jpg

Predicts each photo with each detector (``--detect_faces``), prints the faces found and the detection time, and
writes one figure: a row per detector, the annotated photos side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.inference.detectors import make_face_detector  # noqa: E402
from project.inference.drawing import annotate  # noqa: E402
from project.inference.predictor import AgeGroupPredictor  # noqa: E402

#: scikit-image's sample photographs: a portrait (one face), a cat and a cup (no human face)
PHOTOS = ("astronaut", "chelsea", "coffee")
TILE_HEIGHT = 300


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--detectors", nargs="+", default=["retinaface", "hog", "haar"])
    parser.add_argument("--out", default=None, help="the figure (PNG)")
    args = parser.parse_args(argv)

    import skimage.data

    photos = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}
    predictor = AgeGroupPredictor.from_checkpoint(args.ckpt, device="cpu")
    rows = []
    for detector_name in args.detectors:
        detector = make_face_detector(detector_name)
        tiles = []
        for name, photo in photos.items():
            began = time.perf_counter()
            faces = detector.detect(photo)
            seconds = time.perf_counter() - began
            [result] = list(predictor.iter_results([photo], face_detector=detector))
            found = [f"{p.group} {p.age:.0f} y" if p.ok and p.age is not None else (p.group or p.error)
                     for p in result.predictions]
            print(f"{detector_name:5s} {name:10s} {len(faces)} face(s) in {1000 * seconds:.0f} ms: {found}")
            tile = annotate(photo, result.predictions)
            tiles.append(tile.resize((round(tile.width * TILE_HEIGHT / tile.height), TILE_HEIGHT)))
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    if args.out:
        width = max(row.shape[1] for row in rows)
        padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(padded, axis=0)).save(args.out, quality=80, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
