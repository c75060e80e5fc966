"""``age-classifier-serve``: the prediction API and its web page, with the bundled model or a checkpoint alone.

    age-classifier-serve                                                            # http://127.0.0.1:8000/
    age-classifier-serve --ckpt lightning_logs/version_0/checkpoints/last.ckpt --port 8080 --no-detect_faces

``POST /predict`` (a multipart form with the field ``image``, or the raw image as the body) answers every face's
box, group, probabilities, age and interval, and the model's name; ``GET /health``; ``GET /info`` (model name,
recipe, temperature, input size, classes); ``GET /`` the page. Binds 127.0.0.1 unless told otherwise; uploads are
capped in bytes and pixels; errors are ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import argparse
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from project import __version__
from project.common.errors import OneLineArgumentParser, UserError, add_debug_argument, exit_on_user_error
from project.config.devices import ACCELERATORS, device_type_for
from project.config.recipes import recipe_of
from project.core.age_groups import GROUP_LABELS
from project.inference.detectors import FaceOptions, add_face_arguments, face_options_from
from project.inference.predictor import add_backend_argument
from project.models.bundle import PRETRAINED_DIR, is_bundle, read_record, summary_of
from project.models.checkpoint import read_summary
from project.serve.uploads import TOO_LARGE, RawImageBodies

PROGRAM = "age-classifier-serve"
#: The page's files, shipped inside the package (no CDN, no web fonts: it works offline).
STATIC_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
                "/style.css": ("style.css", "text/css")}


def model_info(checkpoint: Path, backend: str = "torch") -> dict:
    """``GET /info``'s model part: what the checkpoint, bundle or exported model is, read once in the server
    process (settings only: the workers build the network)."""
    if checkpoint.suffix.lower() == ".onnx":
        from project.inference.onnx_backend import OnnxNet

        model = OnnxNet(checkpoint)
        name = model.name
    elif is_bundle(checkpoint):
        record = read_record(checkpoint)
        model, name = summary_of(record), record["name"]
    else:
        model = read_summary(checkpoint)
        name = f"checkpoint {checkpoint.name}"
    settings = model.settings
    calibration = model.age_calibration
    return {
        "name": name, "recipe": recipe_of(settings), "version": __version__, "checkpoint": checkpoint.name,
        "backend": backend,
        "classes": list(GROUP_LABELS), "input_size": settings.input.image_size,
        "mirror_views": settings.input.mirror, "heads": settings.ensemble_size,
        "temperature": model.temperature, "ages": calibration is not None,
        "age_interval_level": calibration.level if calibration and calibration.scale is not None else None,
    }


def build_server(checkpoint: Path, accelerator: str = "auto", workers_per_device: int = 1, max_batch_size: int = 8,
                 batch_timeout: float = 0.05, detect_faces: bool = True, max_upload_mb: float = 20.0,
                 backend: str = "torch", face_options: Optional[FaceOptions] = None):
    """The LitServer: the API, the page's routes, and every error answered as ``{"error": ...}``."""
    import litserve as ls
    from fastapi import HTTPException, Request
    from fastapi.responses import Response

    from project.serve.api import AgeGroupAPI, error_response

    faces = (face_options or FaceOptions()) if detect_faces else None
    api = AgeGroupAPI(checkpoint, faces=faces, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                      backend=backend)
    server = ls.LitServer(api, accelerator="cuda" if device_type_for(accelerator) == "cuda" else "cpu",
                          devices=1, workers_per_device=workers_per_device,
                          model_metadata=model_info(checkpoint, backend),
                          max_payload_size=int(max_upload_mb * 1024 * 1024))

    async def http_error(request: Request, err: HTTPException):
        message = TOO_LARGE if err.status_code == 413 else str(err.detail)
        return error_response(err.status_code, message)

    server.app.add_exception_handler(HTTPException, http_error)
    server.app.add_middleware(RawImageBodies, path=api.api_path, max_bytes=int(max_upload_mb * 1024 * 1024))
    # LitServe answers "/" with "litserve running"; the page takes its place
    server.app.router.routes = [route for route in server.app.router.routes
                                if getattr(route, "path", None) not in STATIC_FILES]
    for path, (name, media_type) in STATIC_FILES.items():
        body = resources.files("project.serve").joinpath("static", name).read_bytes()
        server.app.add_api_route(path, _static(body, media_type, Response), methods=["GET"], include_in_schema=False)
    return server


def _static(body: bytes, media_type: str, response_class):
    async def serve_file():
        return response_class(content=body, media_type=media_type)

    return serve_file


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROGRAM, description="Serve a trained checkpoint: a prediction API and a "
                                   "web page where a photo's faces get their age group and age.",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", "--ckpt_path", dest="ckpt", default=str(PRETRAINED_DIR),
                        help="checkpoint written by training, a bundled model's folder (age-classifier-bundle) or, "
                             "with --backend onnx, an exported .onnx file (default: the bundled model, MODEL_CARD.md)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--accelerator", default="auto", choices=ACCELERATORS, help="auto = the GPU when there is one")
    parser.add_argument("--workers_per_device", type=int, default=1, help="model copies answering requests")
    parser.add_argument("--max_batch_size", type=int, default=8, help="photos predicted together at most")
    parser.add_argument("--batch_timeout", type=float, default=0.05,
                        help="seconds to wait for more photos to fill a batch")
    parser.add_argument("--detect_faces", action=argparse.BooleanOptionalAction, default=True,
                        help="find each face first (needs the faces extra); off: the whole photo is one face")
    add_face_arguments(parser)
    parser.add_argument("--max_upload_mb", type=float, default=20.0, help="largest upload accepted, in MB")
    add_backend_argument(parser)
    add_debug_argument(parser)
    return parser


def check_args(args: argparse.Namespace) -> Path:
    """Everything that can be checked before the workers start; returns the checkpoint."""
    try:
        import litserve  # noqa: F401 - only whether it is there
    except ImportError:
        raise UserError("serving needs LitServe, which is not installed: pip install -e .[serve]") from None
    checkpoint = Path(args.ckpt).expanduser()
    if not (checkpoint.is_file() or is_bundle(checkpoint)):
        raise UserError(f"--ckpt {args.ckpt} does not exist; pass a .ckpt written by training or a bundled model's "
                        f"folder")
    for name in ("workers_per_device", "max_batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.batch_timeout < 0 or not args.max_upload_mb > 0 or not 0 < args.port < 65536:
        raise UserError("--batch_timeout cannot be negative, --max_upload_mb must be positive and --port 1-65535")
    if args.detect_faces:
        face_options_from(args).check()  # the faces extra is there (else a one-line error naming it)
    return checkpoint


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the server; Ctrl-C or SIGTERM stops it."""
    args = get_args_parser().parse_args(argv)
    with exit_on_user_error(PROGRAM, debug=args.debug):
        checkpoint = check_args(args)
        server = build_server(checkpoint, args.accelerator, args.workers_per_device, args.max_batch_size,
                              args.batch_timeout, args.detect_faces, args.max_upload_mb, args.backend,
                              face_options_from(args))
        print(f"{PROGRAM}: serving {server.model_metadata['name']} at http://{args.host}:{args.port}/ "
              f"(Ctrl-C stops)", flush=True)
        # LitServe shuts its worker and HTTP processes down on Ctrl-C; SIGTERM (docker stop, systemd, kill) would
        # end this process alone and leave them running, so it takes the same way out.
        signal.signal(signal.SIGTERM, _stop)
        server.run(host=args.host, port=args.port, generate_client_file=False, num_api_servers=1,
                   log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
