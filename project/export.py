"""``age-classifier-export``: a trained model as one ONNX file, checked against the torch model.

    age-classifier-export --output model.onnx                       # the bundled model
    age-classifier-export --ckpt last.ckpt --output model.onnx --data_dir UTKFace.tar.gz   # check on the test split

The file holds the whole predictor (``project.models.export``) and runs without torch models or Lightning:
``predict.py --backend onnx --ckpt model.onnx``, ``age-classifier-serve --backend onnx``. After writing it, the
exporter runs the torch model and onnxruntime on the same images - the checkpoint's test split with ``--data_dir``
(its run's ``split.json``, or a bundle's ``test_files.txt``), else a few random images - and fails (exit code 1)
unless every probability agrees to within ``--tolerance`` and every decision is the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from project.common.errors import OneLineArgumentParser, UserError, add_debug_argument, exit_on_user_error  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.data.datasets import files_dataset  # noqa: E402
from project.data.split import split_names  # noqa: E402
from project.inference.predictor import load_model  # noqa: E402
from project.models.bundle import (  # noqa: E402
    PRETRAINED_DIR,
    is_bundle,
    listed_test_files,  # noqa: E402
)
from project.models.checkpoint import TrainedNet, run_folder_of  # noqa: E402

PROGRAM = "age-classifier-export"


def test_images(checkpoint: Path, data_dir: str, split_file: Optional[Path], image_size: int) -> List[torch.Tensor]:
    """The preprocessed test images of the checkpoint's run (its ``split.json``) or of a bundle (its
    ``test_files.txt``), in batches of 32."""
    if split_file is None and is_bundle(checkpoint):
        names = listed_test_files(checkpoint)
        if not names:
            raise UserError(f"the bundle {checkpoint} lists no test files: pass --split_file")
    else:
        split_file = split_file or run_folder_of(checkpoint) / "split.json"
        if not split_file.is_file():
            raise UserError(f"no split.json beside {checkpoint}: pass --split_file")
        names = split_names(split_file)["test"]
    dataset = files_dataset(data_dir, names, image_size, default_cache_dir())
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2)
    return [batch["images"][:, 0] for batch in loader]


def compare(trained: TrainedNet, exported: Path, batches: Sequence[torch.Tensor]) -> dict:
    """Largest difference of probabilities and of per-year probabilities, and decisions that differ."""
    from project.inference.onnx_backend import OnnxNet

    onnx = OnnxNet(exported)
    worst_groups = worst_years = 0.0
    differing = images = 0
    for batch in batches:
        with torch.inference_mode():
            logits, years = trained.net.predict(batch)
            expected = torch.softmax(logits.float() / trained.temperature, dim=1)
        outputs = dict(zip(onnx.outputs, onnx.session.run(None, {"images": batch.numpy()})))
        got = torch.from_numpy(outputs["probabilities"])
        worst_groups = max(worst_groups, (got - expected).abs().max().item())
        if years is not None:
            worst_years = max(worst_years, (torch.from_numpy(outputs["year_probabilities"]) - years).abs().max().item())
        differing += int((got.argmax(dim=1) != expected.argmax(dim=1)).sum())
        images += len(batch)
    return {"images": images, "max_abs_diff_probabilities": worst_groups,
            "max_abs_diff_year_probabilities": worst_years, "different_decisions": differing}


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", "--ckpt_path", dest="ckpt", default=str(PRETRAINED_DIR),
                        help="checkpoint written by training or a bundled model's folder (default: the bundled model)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--data_dir", default=None, help="check on the test split of the checkpoint's run")
    parser.add_argument("--split_file", default=None, help="the run's split.json (default: beside the checkpoint; "
                                                           "a bundle's test_files.txt)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted probability difference")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export, check, report; exit code 1 when the check fails, 2 for a usage error."""
    args = get_args_parser().parse_args(argv)
    with exit_on_user_error(PROGRAM, debug=args.debug):
        checkpoint, output = Path(args.ckpt).expanduser(), Path(args.output).expanduser()
        if output.suffix.lower() != ".onnx":
            raise UserError(f"--output {args.output}: the file name must end in .onnx")
        try:
            import onnxruntime  # noqa: F401 - the check needs it

            from project.models.export import export_onnx
        except ImportError:
            raise UserError("exporting needs onnx, onnxscript and onnxruntime: pip install -e .[onnx]") from None
        trained = load_model(checkpoint)
        export_onnx(trained, output)
        size = trained.image_size
        batches = (test_images(checkpoint, args.data_dir, Path(args.split_file) if args.split_file else None, size)
                   if args.data_dir else [torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))])
        report = compare(trained, output, batches)
        print(f"{PROGRAM}: wrote {output} ({trained.name}, {output.stat().st_size / 1e6:.1f} MB); "
              f"on {report['images']} images "
              f"onnxruntime and torch differ by at most {report['max_abs_diff_probabilities']:.2e} in group "
              f"probabilities and {report['max_abs_diff_year_probabilities']:.2e} in per-year probabilities, "
              f"{report['different_decisions']} decisions differ")
        if report["max_abs_diff_probabilities"] > args.tolerance or report["different_decisions"]:
            print(f"{PROGRAM}: error: the exported model does not match the checkpoint", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
