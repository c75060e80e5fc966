"""UTKFace-style chips under the default face detection: does finding faces first cost accuracy on face chips?

    python benchmarks/chips.py --data_dir ../shared/data/UTKFace.tar.gz            # the bundled model, its test split
    python benchmarks/chips.py --ckpt best.ckpt --data_dir UTKFace.tar.gz --split_file split.json

``age-classifier-predict`` and ``AgeGroupPredictor.predict`` find the faces of every image by default. A face chip
(one face filling the frame, as UTKFace's are) is then predicted as it is; any other face is cut out and aligned.
This runs the default detector on every test chip and sorts the chips: taken as a chip (a square image that one
face's crop overlaps by ``CHIP_OVERLAP``: predicted exactly as the whole image, which the tests check), or not (no
face found, or a face cut out again). Only the latter can change: they are predicted both ways - as the whole image
(what prediction did before faces were found by default) and with the default detection - and the report says how
many decisions and how much accuracy and error in years the default detection changes over the whole split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.config.devices import machine_name  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.core.transforms import load_rgb_image  # noqa: E402
from project.data.datasets import files_dataset  # noqa: E402
from project.data.split import split_names  # noqa: E402
from project.inference.detectors import FaceOptions  # noqa: E402
from project.inference.predictor import AgeGroupPredictor, face_filling, image_overlap  # noqa: E402
from project.models.bundle import PRETRAINED_DIR, is_bundle, listed_test_files  # noqa: E402
from project.models.checkpoint import run_folder_of  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=str(PRETRAINED_DIR), help="a checkpoint or bundle (default: the bundled)")
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz or folder")
    parser.add_argument("--split_file", default=None, help="a run's split.json (default: the bundle's test files, "
                                                           "or the split.json beside the checkpoint)")
    parser.add_argument("--every", type=int, default=1, help="every Nth test chip only (a spread subset)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    checkpoint = Path(args.ckpt)
    if args.split_file is None and is_bundle(checkpoint):
        names = listed_test_files(checkpoint)
    else:
        split_file = Path(args.split_file) if args.split_file else run_folder_of(checkpoint) / "split.json"
        names = split_names(split_file)["test"]
    names = names[::args.every]
    dataset = files_dataset(args.data_dir, names, 200, default_cache_dir())
    items = dataset.items
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint)
    detector = FaceOptions().build()
    faces, overlaps, as_chip = [], [], []
    for item in tqdm(items, desc="Finding faces", unit="chip"):
        image = load_rgb_image(dataset.root / item.relpath)
        found, size = detector.detect(image), image.size
        faces.append(len(found))
        overlaps.append(max(image_overlap(face.box, size) for face in found) if found else None)
        as_chip.append(face_filling(found, size) is not None)
    others = [i for i, chip in enumerate(as_chip) if not chip]
    paths = [dataset.root / items[i].relpath for i in others]
    whole = predictor.predict(paths, face_detector=None)
    # the first face of each image stands for it (a chip's other "faces" are false detections)
    default = [result.predictions[0] for result in predictor.iter_results(paths, face_detector=detector)]
    truth = [items[i] for i in others]
    right_whole = sum(p.group_index == item.group for p, item in zip(whole, truth))
    right_default = sum(p.ok and p.group_index == item.group for p, item in zip(default, truth))
    # years of error, over the chips with a face found: what a changed cut does to the age
    error_change = sum(abs(d.age - item.age) - abs(w.age - item.age) for w, d, item in zip(whole, default, truth)
                       if d.ok)
    counts = np.array(faces)
    result = {
        "model": predictor.model_name, "machine": machine_name(), "chips": len(items),
        "predicted_as_chips": int(sum(as_chip)), "no_face": int((counts == 0).sum()),
        "several_faces": int((counts > 1).sum()),
        "cut_again": int(sum(n > 0 and not chip for n, chip in zip(faces, as_chip))),
        "overlap_quantiles_1_5_50": [float(q) for q in np.quantile([o for o in overlaps if o is not None],
                                                                   [0.01, 0.05, 0.5])],
        "decisions_differing": int(sum(p.group_index != d.group_index for p, d in zip(whole, default))),
        "accuracy_change_points": 100 * (right_default - right_whole) / len(items),
        "right_whole_image_minus_default": int(right_whole - right_default),
        "mae_change_years": float(error_change / len(items)),
        "not_taken_as_chips": [{"chip": item.relpath, "faces": faces[i], "overlap": overlaps[i], "true": item.group,
                                "whole_image": w.group_index, "default": d.group_index}
                               for i, item, w, d in zip(others, truth, whole, default)],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
