"""UTKFace-style chips under the default face detection: does finding faces first cost accuracy on face chips?

    python benchmarks/chips.py --data_dir ../shared/data/UTKFace.tar.gz            # the bundled model, its test split
    python benchmarks/chips.py --ckpt best.ckpt --data_dir UTKFace.tar.gz --split_file split.json

``age-classifier-predict`` and ``AgeGroupPredictor.predict`` find the faces of every image by default. A face chip
(one face filling the frame, as UTKFace's are) is then predicted as it is; any other face is cut out and aligned.
This predicts every test chip both ways - as a whole image (what prediction did before faces were found by default)
and with the default detection - and reports how many chips the detector took as chips, how many it cut again or
found no face in, the accuracy and MAE of both ways, and how many decisions differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.data.datasets import files_dataset  # noqa: E402
from project.data.split import split_names  # noqa: E402
from project.devices import machine_name  # noqa: E402
from project.inference.detectors import FaceOptions  # noqa: E402
from project.inference.predictor import AgeGroupPredictor, fills_image, image_overlap  # noqa: E402
from project.models.bundle import PRETRAINED_DIR, is_bundle, listed_test_files  # noqa: E402
from project.models.checkpoint import run_folder_of  # noqa: E402
from project.settings import default_cache_dir  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=str(PRETRAINED_DIR), help="a checkpoint or bundle (default: the bundled)")
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz or folder")
    parser.add_argument("--split_file", default=None, help="a run's split.json (default: the bundle's test files, "
                                                           "or the split.json beside the checkpoint)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test chips")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    checkpoint = Path(args.ckpt)
    if args.split_file is None and is_bundle(checkpoint):
        names = listed_test_files(checkpoint)
    else:
        split_file = Path(args.split_file) if args.split_file else run_folder_of(checkpoint) / "split.json"
        names = split_names(split_file)["test"]
    names = names[:args.limit] if args.limit else names
    dataset = files_dataset(args.data_dir, names, 200, default_cache_dir())
    paths = [dataset.root / item.relpath for item in dataset.items]
    ages = np.array([item.age for item in dataset.items], dtype=float)
    groups = np.array([item.group for item in dataset.items])
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint)
    detector = FaceOptions().build()

    whole = predictor.predict(paths, face_detector=None)
    results = list(predictor.iter_results(paths, face_detector=detector))
    faces = np.array([sum(p.ok for p in result.predictions) for result in results])
    # the first face of each image stands for it (a chip's other "faces" are false detections)
    default = [result.predictions[0] for result in results]
    sizes = [result.image.size for result in results]
    as_chip = np.array([n == 1 and fills_image(p.face_box, size) for n, p, size in zip(faces, default, sizes)])
    overlaps = np.array([image_overlap(p.face_box, size) for p, size in zip(default, sizes) if p.ok])
    whole_groups = np.array([p.group_index for p in whole])
    default_groups = np.array([p.group_index if p.ok else -1 for p in default])
    whole_ages = np.array([p.age for p in whole], dtype=float)
    default_ages = np.array([p.age if p.ok else np.nan for p in default], dtype=float)
    result = {
        "model": predictor.model_name, "machine": machine_name(), "chips": len(paths),
        "no_face": int((faces == 0).sum()), "one_face": int((faces == 1).sum()), "several": int((faces > 1).sum()),
        "predicted_as_chips": int(as_chip.sum()),
        "overlap_quantiles_5_25_50": [float(q) for q in np.quantile(overlaps, [0.05, 0.25, 0.5])],
        "accuracy_whole_image": float((whole_groups == groups).mean()),
        "accuracy_default": float((default_groups == groups).mean()),
        "mae_whole_image": float(np.abs(whole_ages - ages).mean()),
        "mae_default_found": float(np.nanmean(np.abs(default_ages - ages))),
        "decisions_differing": int((whole_groups != default_groups).sum()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
