"""Predict the age group of people in your own photos with a trained checkpoint.

    python project/predict.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt photo.jpg more_photos/
    python -m project.predict --ckpt CKPT photos/ --output predictions.csv --annotate annotated/ --detect_faces

From Python::

    predictor = AgeGroupPredictor.from_checkpoint("last.ckpt")
    for result in predictor.predict(["a.jpg", pil_image, numpy_array]):
        print(result.source, result.group, result.confidence, result.error)

Images go through exactly the training preprocessing (:mod:`project.transforms`). Only the checkpoint is needed:
no dataset, no feature cache, no network.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from project.age_groups import GROUP_LABELS
from project.errors import DEBUG_ENV, OneLineArgumentParser, UserError, exit_on_user_error
from project.faces import crop_face
from project.transforms import ImageInput, build_transform, load_rgb_image

PROGRAM = "predict.py"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
OUTPUT_SUFFIXES = (".csv", ".json")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
#: below this many images a progress bar is only noise
PROGRESS_MIN_IMAGES = 50


@dataclass
class Prediction:
    """The prediction for one image (or one face of it with ``--detect_faces``).

    ``error`` is set, and the prediction fields are empty, when the image could not be read (or had no face).
    ``face_box`` is ``(x, y, w, h)`` of the detected face in the upright image.
    """

    source: str
    group: Optional[str] = None
    group_index: Optional[int] = None
    confidence: Optional[float] = None
    probabilities: Dict[str, float] = field(default_factory=dict)
    face_box: Optional[Tuple[int, int, int, int]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict:
        record = asdict(self)
        record["face_box"] = list(self.face_box) if self.face_box else None
        return record


@dataclass
class ImageResult:
    """One input: its upright RGB image (``None`` if unreadable) and its predictions (one per face)."""

    source: str
    image: Optional[Image.Image]
    predictions: List[Prediction]


def describe_error(err: BaseException) -> str:
    """A one-line reason why an image could not be used."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not an image"
    text = " ".join(str(err).split()) or type(err).__name__
    if type(err).__name__ == "UnidentifiedImageError":
        return "not a readable image (unknown or corrupt format)"
    return f"cannot read image ({type(err).__name__}: {text[:200]})"


def source_name(item: ImageInput, index: int) -> str:
    """How an input is named in the results: its path, or ``<PIL image #i>`` / ``<array #i>``."""
    if isinstance(item, Image.Image):
        return f"<PIL image #{index}>"
    if isinstance(item, np.ndarray):
        return f"<array #{index}>"
    return str(item)


def resolve_device(name: Union[str, torch.device, None]) -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``gpu``/``cuda`` or any ``torch.device`` string."""
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, gpu or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator gpu but no CUDA GPU is visible; use --accelerator cpu or auto")
    return device


def _as_list(images) -> List[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class AgeGroupPredictor:
    """Age-group predictions for arbitrary images with a trained :class:`LitClassifier`.

    Args:
        model: a trained ``LitClassifier`` (its ``hparams.image_size`` fixes the preprocessing).
        device: where to run; ``None`` keeps the model where it is (used for plots right after training).
    """

    def __init__(self, model, device: Union[str, torch.device, None] = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(resolve_device(device))
        reference = next(self.model.head.parameters())
        self.device, self.dtype = reference.device, reference.dtype
        self.image_size = int(self.model.hparams.image_size)
        self.transform = build_transform(self.image_size)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"
                        ) -> "AgeGroupPredictor":
        """Load a checkpoint written by training (safely: ``weights_only``, nothing downloaded)."""
        from project.lit_classifier_main import load_classifier  # deferred: Lightning is slow to import

        target = resolve_device(device)
        model = load_classifier(path, map_location=target)
        return cls(model, device=target)

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(self, images: Union[ImageInput, Iterable[ImageInput]], batch_size: int = 32,
                face_detector=None) -> List[Prediction]:
        """Predict paths, PIL images or uint8 arrays (one or a list); unreadable files get ``error`` set.

        With a :class:`project.faces.FaceDetector`, every face found is predicted on its own (one result each).
        """
        return [p for result in self.iter_results(images, batch_size, face_detector) for p in result.predictions]

    def iter_results(self, images: Union[ImageInput, Iterable[ImageInput]], batch_size: int = 32,
                     face_detector=None) -> Iterator[ImageResult]:
        """Like :meth:`predict`, but one :class:`ImageResult` per input, keeping the loaded image (for drawing).

        Inputs are read ``batch_size`` at a time, so a folder of thousands of photos never sits in memory.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1 (got {batch_size})")
        indexed = list(enumerate(_as_list(images)))
        for chunk in _chunks(indexed, batch_size):
            loaded = [self._load(item, index, face_detector) for index, item in chunk]
            crops = [(pred, crop) for result, crop_list in loaded for pred, crop in zip(result.predictions, crop_list)
                     if crop is not None]
            for batch in _chunks(crops, batch_size):
                self._fill(batch)
            yield from (result for result, _ in loaded)

    def probabilities(self, rgb_images: Sequence[Image.Image]) -> np.ndarray:
        """Softmax probabilities (``N x 5``) for upright RGB images, through the training preprocessing."""
        batch = torch.stack([self.transform(image) for image in rgb_images])
        with torch.inference_mode():
            logits = self.model(batch.to(self.device, self.dtype))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _load(self, item: ImageInput, index: int, face_detector) -> Tuple[ImageResult, List[Optional[Image.Image]]]:
        """Read one input; return its result skeleton and the crop (or face crops) to predict."""
        name = source_name(item, index)
        try:
            image = load_rgb_image(item)
        except Exception as err:  # any unreadable input is reported, the others go on
            return ImageResult(name, None, [Prediction(name, error=describe_error(err))]), [None]
        if face_detector is None:
            return ImageResult(name, image, [Prediction(name)]), [image]
        faces = face_detector.detect(image)
        if not faces:
            return ImageResult(name, image, [Prediction(name, error="no face detected")]), [None]
        predictions = [Prediction(name, face_box=face.as_tuple()) for face in faces]
        return ImageResult(name, image, predictions), [crop_face(image, face) for face in faces]

    def _fill(self, batch: Sequence[Tuple[Prediction, Image.Image]]) -> None:
        probabilities = self.probabilities([crop for _, crop in batch])
        for (prediction, _), row in zip(batch, probabilities):
            best = int(row.argmax())
            prediction.group_index = best
            prediction.group = GROUP_LABELS[best]
            prediction.confidence = float(row[best])
            prediction.probabilities = {label: float(p) for label, p in zip(GROUP_LABELS, row)}


# ------------------------------------------------------------------------------------------------ drawing


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _label_text(prediction: Prediction) -> str:
    if not prediction.ok:
        return prediction.error
    return f"{prediction.group} ({prediction.confidence:.0%})"


def _draw_label(draw: ImageDraw.ImageDraw, text: str, anchor_xy: Tuple[int, int], max_width: int,
                font_size: int, below: bool) -> None:
    """White text on a black box at ``anchor_xy`` (box above the point unless ``below``), shrunk to fit."""
    font = _font(font_size)
    while font_size > 6 and draw.textlength(text, font=font) > max_width:
        font_size -= 1
        font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, font_size // 4)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = anchor_xy
    y = y if below else max(0, y - height)
    draw.rectangle([x, y, x + width, y + height], fill=(0, 0, 0))
    draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)


def annotate(image: Image.Image, predictions: Sequence[Prediction]) -> Image.Image:
    """A copy of ``image`` (same size) with each prediction's group and probability (and face box) drawn on it."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    short_side = min(out.size)
    font_size = max(10, round(short_side * 0.045))  # ~45 px on a 1000 px photo, still legible at 200 px
    for prediction in predictions:
        if prediction.face_box is None:
            _draw_label(draw, _label_text(prediction), (0, 0), out.width, font_size, below=True)
            continue
        x, y, w, h = prediction.face_box
        draw.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=max(2, short_side // 200))
        _draw_label(draw, _label_text(prediction), (x, y), max(w, out.width - x), font_size, below=y < font_size)
    return out


def save_image(image: Image.Image, path: Path) -> None:
    """Save in the format of ``path``'s suffix (JPEG/WebP at high quality; PNG for suffixes PIL cannot write)."""
    if path.suffix.lower() not in Image.registered_extensions():  # e.g. photo.jfif: PIL cannot write that name
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
    image.save(path, **options)


# ----------------------------------------------------------------------------------------- inputs, outputs


def find_images(arguments: Sequence[str]) -> List[Tuple[Path, Path]]:
    """``(path, relative name for --annotate)`` for every file argument and every image file under a folder.

    Files named on the command line are always tried (an unreadable one gets an error row); folders are walked
    recursively for image suffixes, skipping hidden files such as macOS ``._*`` copies.
    """
    found: List[Tuple[Path, Path]] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found.extend((p, p.relative_to(path)) for p in files)
        elif path.exists():
            found.append((path, Path(path.name)))
        else:
            raise UserError(f"{argument} does not exist; pass image files or folders of images")
    if not found:
        raise UserError(f"no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found in "
                        f"{', '.join(arguments)}")
    return found


def unique_names(names: Sequence[Path]) -> List[Path]:
    """``names`` with ``_2``, ``_3``... added where two inputs would write the same annotated file."""
    seen, unique = set(), []
    for name in names:
        candidate, counter = name, 1
        while candidate.as_posix().lower() in seen:
            counter += 1
            candidate = name.with_name(f"{name.stem}_{counter}{name.suffix}")
        seen.add(candidate.as_posix().lower())
        unique.append(candidate)
    return unique


CSV_COLUMNS = (["source", "face_x", "face_y", "face_w", "face_h", "group", "group_index", "confidence"]
               + [f"p_{label}" for label in GROUP_LABELS] + ["error"])


def csv_row(prediction: Prediction) -> Dict:
    """One CSV row: the face box as four columns, one probability column per group (6 decimals)."""
    box = prediction.face_box or (None,) * 4
    confidence = None if prediction.confidence is None else round(prediction.confidence, 6)
    row = {"source": prediction.source, "face_x": box[0], "face_y": box[1], "face_w": box[2], "face_h": box[3],
           "group": prediction.group, "group_index": prediction.group_index, "confidence": confidence,
           "error": prediction.error}
    row.update({f"p_{label}": round(p, 6) for label, p in prediction.probabilities.items()})
    return {key: "" if value is None else value for key, value in row.items()}


def write_output(predictions: Sequence[Prediction], path: Path) -> None:
    """Write all predictions as CSV or JSON (by ``path``'s suffix), error rows included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps([p.to_dict() for p in predictions], indent=1))
    else:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(csv_row(p) for p in predictions)
    os.replace(tmp, path)


def format_table(predictions: Sequence[Prediction], max_name: int = 60) -> str:
    """A plain-text table: file, (face), predicted group, probability of each group."""
    with_faces = any(p.face_box for p in predictions)
    names = [p.source if len(p.source) <= max_name else "..." + p.source[-(max_name - 3):] for p in predictions]
    name_width = max([len("file")] + [len(n) for n in names])
    header = f"{'file':<{name_width}}  " + (f"{'face (x,y,w,h)':<19}  " if with_faces else "")
    header += f"{'group':<7}  " + "  ".join(f"{label:>7}" for label in GROUP_LABELS)
    lines = [header, "-" * len(header)]
    for name, prediction in zip(names, predictions):
        line = f"{name:<{name_width}}  "
        if with_faces:
            line += f"{','.join(map(str, prediction.face_box)) if prediction.face_box else '-':<19}  "
        if prediction.ok:
            probabilities = "  ".join(f"{prediction.probabilities[label]:>7.3f}" for label in GROUP_LABELS)
            line += f"{prediction.group:<7}  {probabilities}"
        else:
            line += f"error: {prediction.error}"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROGRAM,
        description="Predict the age group (0-24, 25-49, 50-74, 75-99, 100-124) of the people in images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--ckpt", "--ckpt_path", dest="ckpt", required=True, help="checkpoint written by training")
    parser.add_argument("--output", type=str, default=None, metavar="FILE",
                        help="also write the results to FILE, a .csv or .json")
    parser.add_argument("--annotate", type=str, default=None, metavar="DIR",
                        help="write a copy of each image with its prediction drawn on it into DIR")
    parser.add_argument("--detect_faces", action="store_true",
                        help="find faces (OpenCV Haar cascade, pip install -e .[faces]) and predict each one")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--accelerator", "--device", dest="accelerator", default="auto", choices=ACCELERATORS,
                        help="auto = the GPU when there is one")
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (same as {DEBUG_ENV}=1)")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Check the flags before the (slow) model load; raise :class:`UserError` with a one-line fix."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    if not Path(args.ckpt).expanduser().is_file():
        raise UserError(f"--ckpt {args.ckpt} does not exist; pass a .ckpt written by training")
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {args.output}: the file name must end in .csv or .json")
    if args.annotate and Path(args.annotate).exists() and not Path(args.annotate).is_dir():
        raise UserError(f"--annotate {args.annotate} is a file; pass a folder for the annotated copies")


def run(args: argparse.Namespace) -> int:
    """Predict every input, print the table, write the outputs; 1 if nothing could be predicted."""
    validate_args(args)
    inputs = find_images(args.inputs)
    detector = None
    if args.detect_faces:
        from project.faces import FaceDetector

        detector = FaceDetector()
    predictor = AgeGroupPredictor.from_checkpoint(args.ckpt, device=args.accelerator)
    annotated_names = unique_names([name for _, name in inputs])
    predictions: List[Prediction] = []
    from tqdm.auto import tqdm

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
