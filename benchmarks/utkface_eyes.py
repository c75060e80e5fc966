"""Where UTKFace's chips put the eyes: the template that ``--detect_faces`` aligns new faces to.

    python benchmarks/utkface_eyes.py --data_dir ../shared/data/UTKFace.tar.gz --images 2000 [--detector retinaface]

Runs a face detector and its landmark model (dlib's HOG detector and 5-point model, or RetinaFace) on real UTKFace
chips (each pasted into the middle of a grey canvas, so a face that fills its chip is still found) and prints the
median eye centres and nose point, as fractions of the chip's side: the detector's template in
``project/inference/alignment.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.inference.detectors import make_face_detector  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz")
    parser.add_argument("--images", type=int, default=2000, help="chips spread over the archive")
    parser.add_argument("--detector", default="hog", choices=("hog", "retinaface"))
    args = parser.parse_args(argv)

    detector = make_face_detector(args.detector, min_face=40)
    left_eyes, right_eyes, noses, tilts = [], [], [], []
    with tarfile.open(args.data_dir) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        step = max(1, len(members) // args.images)
        for member in members[::step][: args.images]:
            chip = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            side = chip.width
            canvas = Image.new("RGB", (2 * side, 2 * side), (128, 128, 128))
            canvas.paste(chip, (side // 2, side // 2))
            found = detector.landmarks(canvas)
            if len(found) != 1:
                continue
            points = (np.asarray(found[0]) - side / 2) / side
            left, right, nose = points[0], points[1], points[2]
            left_eyes.append(left)
            right_eyes.append(right)
            noses.append(nose)
            tilts.append(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    result = {"chips": len(members[::step][: args.images]), "with_one_face": len(left_eyes),
              "left_eye": np.median(left_eyes, axis=0).round(4).tolist(),
              "right_eye": np.median(right_eyes, axis=0).round(4).tolist(),
              "nose": np.median(noses, axis=0).round(4).tolist(),
              "eye_tilt_degrees_median_abs": float(np.median(np.abs(tilts))),
              "eye_distance_iqr": np.percentile(np.linalg.norm(np.subtract(right_eyes, left_eyes), axis=1),
                                                [25, 75]).round(4).tolist()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
