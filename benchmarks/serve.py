"""Load test of the prediction server on 127.0.0.1: throughput and latency with and without batching.

    python benchmarks/serve.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir ../shared/data/UTKFace.tar.gz --out results/serve.md

Starts ``python -m project.serve`` once per batching setting (measuring the cold start: command to first answer),
then sends a fixed number of requests from 1, 4 and 16 concurrent clients, for UTKFace face crops (faces found by
the detector in each crop) and for 1-megapixel photos (a crop pasted into a 1000x1000 picture). Every run is bounded:
``--requests`` per setting and ``--time_limit`` seconds, whichever comes first. The offline rate is the same model
predicting the same images in-process (``AgeGroupPredictor``, batches of ``--max_batch_size``, same detector): the
server's target is at least 80 % of it.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from project.inference.detectors import make_face_detector  # noqa: E402
from project.inference.predictor import AgeGroupPredictor  # noqa: E402

BOUNDARY = "benchmarkboundary42"


def machine_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def utkface_crops(archive: Path, count: int) -> List[Image.Image]:
    """``count`` UTKFace chips spread over the archive, in memory only."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        step = max(1, len(members) // count)
        return [Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB") for m in members[::step][:count]]


def megapixel_photo(crop: Image.Image) -> Image.Image:
    """A 1000x1000 picture with ``crop`` (a face) at a third of its width, on a grey gradient."""
    photo = Image.linear_gradient("L").resize((1000, 1000)).convert("RGB")
    photo.paste(crop.resize((300, 300)), (350, 250))
    return photo


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes) -> float:
    """Seconds one prediction request took (raises if it did not answer 200)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - began


def start_server(args, batch_size: int):
    """The server process, its URL and when the command was started (once ``/health`` answers)."""
    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "project.serve", "--ckpt", args.ckpt, "--port", str(port),
                                "--max_batch_size", str(batch_size), "--batch_timeout", str(args.batch_timeout)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read()[-2000:])
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    return process, url, began


def load(url: str, bodies: List[bytes], clients: int, requests: int, time_limit: float) -> Dict:
    """``requests`` predictions from ``clients`` threads (each its own share), within ``time_limit`` seconds."""
    latencies: List[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + time_limit

    def client(index: int) -> None:
        for number in range(index, requests, clients):
            if time.perf_counter() > deadline:
                return
            seconds = post(url + "/predict", bodies[number % len(bodies)])
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"clients": clients, "requests": len(latencies), "images_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(0.50), "p95_ms": percentile(0.95), "p99_ms": percentile(0.99)}


def offline_rate(args, images: List[Image.Image]) -> float:
    """Images/s of the same model, detector and batch size in-process (after one warm-up batch)."""
    predictor = AgeGroupPredictor.from_checkpoint(args.ckpt, device="cpu")
    detector = make_face_detector()  # the server's default detector
    predictor.predict(images[: args.max_batch_size], batch_size=args.max_batch_size, face_detector=detector)
    began = time.perf_counter()
    predictor.predict(images, batch_size=args.max_batch_size, face_detector=detector)
    return len(images) / (time.perf_counter() - began)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data_dir", required=True, help="UTKFace.tar.gz: where the face crops come from")
    parser.add_argument("--images", type=int, default=32, help="distinct images per kind")
    parser.add_argument("--requests", type=int, default=64, help="requests per setting")
    parser.add_argument("--time_limit", type=float, default=120.0, help="seconds per setting at most")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--batch_timeout", type=float, default=0.05)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    crops = utkface_crops(Path(args.data_dir), args.images)
    kinds = {"face crop (200x200)": crops, "1-megapixel photo": [megapixel_photo(crop) for crop in crops]}
    results = {"machine": machine_name(), "rows": [], "cold_start_s": {}, "offline_images_per_s": {}}
    for kind, images in kinds.items():
        results["offline_images_per_s"][kind] = offline_rate(args, images)
        print(json.dumps({"offline": kind, "images_per_s": results["offline_images_per_s"][kind]}), flush=True)
    for batch_size in (args.max_batch_size, 1):
        bodies = {kind: [multipart(jpeg(image)) for image in images] for kind, images in kinds.items()}
        process, url, began = start_server(args, batch_size)
        try:
            post(url + "/predict", bodies["face crop (200x200)"][0])
            results["cold_start_s"][f"batch {batch_size}"] = time.perf_counter() - began
            for kind in kinds:
                for clients in args.clients:
                    row = {"kind": kind, "max_batch_size": batch_size,
                           **load(url, bodies[kind], clients, args.requests, args.time_limit)}
                    print(json.dumps(row), flush=True)
                    results["rows"].append(row)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    lines = [f"Machine: {results['machine']} (2 cores here); {args.requests} requests per row; offline = the same "
             f"model in-process, batches of {args.max_batch_size}.", "",
             "| images | batching | clients | images/s | vs offline | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        offline = results["offline_images_per_s"][row["kind"]]
        batching = f"up to {row['max_batch_size']}" if row["max_batch_size"] > 1 else "off"
        lines.append(f"| {row['kind']} | {batching} | {row['clients']} | {row['images_per_s']:.1f} | "
                     f"{row['images_per_s'] / offline:.0%} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                     f"{row['p99_ms']:.0f} |")
    lines.append("")
    lines.append("Offline: " + ", ".join(f"{kind} {rate:.1f} images/s"
                                         for kind, rate in results["offline_images_per_s"].items()) + ".")
    lines.append("Cold start (command to first answer): " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in results["cold_start_s"].items()) + ".")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
