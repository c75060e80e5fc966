"""Predict the age group and age of the people in your own photos: the command line.

    age-classifier-predict photo.jpg more_photos/                  # the bundled model, every face found
    python project/predict.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt photos/ --output out.csv
    python -m project.predict photos/ --annotate annotated/ --no-detect_faces      # each whole image is one face

From Python, :class:`AgeGroupPredictor` (``project.inference.predictor``, importable from here too)::

    predictor = AgeGroupPredictor.pretrained()          # or AgeGroupPredictor.from_checkpoint("last.ckpt")
    for result in predictor.predict(["a.jpg", pil_image, numpy_array]):
        print(result.source, result.group, result.age, result.error)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402

from project.common.errors import (  # noqa: E402
    OneLineArgumentParser,
    UserError,
    add_debug_argument,
    exit_on_user_error,
)
from project.config.devices import ACCELERATORS  # noqa: E402
from project.inference.detectors import add_face_arguments, auto_face_detector, face_options_from  # noqa: E402
from project.inference.drawing import annotate, save_image  # noqa: E402
from project.inference.faces import FaceDetector  # noqa: E402
from project.inference.inputs import find_images, unique_names  # noqa: E402
from project.inference.predictor import AgeGroupPredictor, Prediction, add_backend_argument  # noqa: E402
from project.inference.writers import OUTPUT_SUFFIXES, format_table, write_output  # noqa: E402

__all__ = ["AgeGroupPredictor", "Prediction", "main"]

PROGRAM = "predict.py"
#: below this many images a progress bar is only noise
PROGRESS_MIN_IMAGES = 50


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROGRAM,
        description="Predict the age group (0-24, 25-49, 50-74, 75-99, 100-124) of the people in images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--ckpt", "--ckpt_path", dest="ckpt", default=None,
                        help="checkpoint written by training, a bundled model's folder (age-classifier-bundle) or, "
                             "with --backend onnx, an exported .onnx file (default: the bundled model, MODEL_CARD.md)")
    parser.add_argument("--output", type=str, default=None, metavar="FILE",
                        help="also write the results to FILE, a .csv or .json")
    parser.add_argument("--annotate", type=str, default=None, metavar="DIR",
                        help="write a copy of each image with its prediction drawn on it into DIR")
    parser.add_argument("--detect_faces", action=argparse.BooleanOptionalAction, default=None,
                        help="find every face, align it like UTKFace and predict each one (an image that is a face "
                             "chip already is predicted as it is); default: on where the faces extra is installed "
                             "(pip install -e .[faces]); --no-detect_faces: each whole image is one face")
    add_face_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--accelerator", "--device", dest="accelerator", default="auto", choices=ACCELERATORS,
                        help="auto = the GPU when there is one")
    add_backend_argument(parser)
    add_debug_argument(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Check the flags before the (slow) model load; raise :class:`UserError` with a one-line fix."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    if args.ckpt is not None and not Path(args.ckpt).expanduser().exists():
        raise UserError(f"--ckpt {args.ckpt} does not exist; pass a .ckpt written by training or a bundled model's "
                        f"folder")
    if args.backend == "onnx" and args.accelerator in ("gpu", "cuda"):
        raise UserError("--backend onnx runs on the CPU: use --accelerator cpu or auto")
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {args.output}: the file name must end in .csv or .json")
    if args.annotate and Path(args.annotate).exists() and not Path(args.annotate).is_dir():
        raise UserError(f"--annotate {args.annotate} is a file; pass a folder for the annotated copies")


def face_detector_for(args: argparse.Namespace) -> Optional[FaceDetector]:
    """``--detect_faces``: the detector (the faces extra is needed); ``--no-detect_faces``: none; neither: the
    detector where the faces extra is installed, else none (said once)."""
    options = face_options_from(args)
    if args.detect_faces is None:
        return auto_face_detector(options)
    return options.build() if args.detect_faces else None


def run(args: argparse.Namespace) -> int:
    """Predict every input, print the table, write the outputs; 1 if nothing could be predicted."""
    validate_args(args)
    inputs = find_images(args.inputs)
    detector = face_detector_for(args)
    predictor = AgeGroupPredictor.from_checkpoint(args.ckpt, device=args.accelerator, backend=args.backend)
    print(f"model: {predictor.model_name}")
    annotated_names = unique_names([name for _, name in inputs])
    predictions: List[Prediction] = []
    results = predictor.iter_results([path for path, _ in inputs], args.batch_size, detector)
    with tqdm(total=len(inputs), unit="img", disable=len(inputs) < PROGRESS_MIN_IMAGES, file=sys.stderr) as bar:
        for result, name in zip(results, annotated_names):
            for prediction in result.predictions:
                if not prediction.ok:
                    bar.write(f"{PROGRAM}: warning: {prediction.source}: {prediction.error}", file=sys.stderr)
            if args.annotate and result.image is not None:
                save_image(annotate(result.image, result.predictions), Path(args.annotate) / name)
            predictions.extend(result.predictions)
            bar.update(1)
    print(format_table(predictions))
    if args.output:
        write_output(predictions, Path(args.output))
    if not any(p.ok for p in predictions):
        print(f"{PROGRAM}: error: no image could be predicted ({len(predictions)} failed)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: exit code 0, 1 if nothing could be predicted, 2 for a usage error."""
    args = get_args_parser().parse_args(argv)
    with exit_on_user_error(PROGRAM, debug=args.debug):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
