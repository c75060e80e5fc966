"""The prediction service: the API in-process, every kind of bad request, and the command that starts it."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from helpers.paths import REPO
from helpers.photos import png_bomb, two_face_photo
from helpers.run_if import face_detector
from PIL import Image

litserve = pytest.importorskip("litserve", reason="the serve extra is not installed: pip install -e .[serve]")
pytest.importorskip("httpx2", reason="the test extra's HTTP client is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from litserve.utils import wrap_litserve_start  # noqa: E402

from project.core.age_groups import GROUP_LABELS  # noqa: E402
from project.serve.server import build_server, main  # noqa: E402


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


GOOD = jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def client(checkpoint):
    """The server of the shared test checkpoint (whole photos, no face detection; uploads capped at 1 MB)."""
    server = build_server(checkpoint, accelerator="cpu", max_batch_size=4, batch_timeout=0.01, detect_faces=False,
                          max_upload_mb=1)
    with wrap_litserve_start(server) as started, TestClient(started.app) as test_client:
        yield test_client


def post(client, data: bytes, content_type: str = "image/jpeg", field: str = "image", name: str = "photo.jpg"):
    return client.post("/predict", files={field: (name, data, content_type)})


def raw(client, data: bytes, content_type="image/jpeg"):
    """POST ``data`` as the request body itself (``curl --data-binary @photo.jpg -H "Content-Type: image/jpeg"``)."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post("/predict", content=data, headers=headers)


def test_a_raw_image_body_is_answered_like_an_upload(client):
    for content_type in ("image/jpeg", "application/octet-stream"):
        response = raw(client, GOOD, content_type)
        assert response.status_code == 200, response.text
        assert response.json()["faces"] == post(client, GOOD).json()["faces"]


def test_a_photo_gets_its_group_age_and_interval(client):
    response = post(client, GOOD)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image"] == {"width": 40, "height": 48} and "note" not in answer
    assert answer["model"]["recipe"] == "default" and answer["model"]["version"]
    assert answer["model"]["name"].startswith("checkpoint best-")  # every answer names its model
    [face] = answer["faces"]
    assert face["box"] is None and face["group"] in GROUP_LABELS
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert face["confidence"] == pytest.approx(max(face["probabilities"].values()))
    assert face["age_interval"][0] <= face["age"] <= face["age_interval"][1]


@pytest.mark.parametrize("send, status, message", [
    (lambda c: post(c, b"this is a text file, not a photo"), 415, "not a readable image"),
    (lambda c: post(c, GOOD[: len(GOOD) // 2]), 422, "cannot be decoded"),
    (lambda c: post(c, b""), 400, "empty"),
    (lambda c: post(c, b"hello", content_type="text/plain", name="notes.txt"), 415, "not an image type"),
    (lambda c: post(c, GOOD, field="photo"), 400, "field named 'image'"),
    (lambda c: c.post("/predict", data={"image": "not a file"}), 400, "field named 'image'"),
    (lambda c: post(c, GOOD + b"\0" * 2_000_000), 413, "larger than the server accepts"),
    (lambda c: post(c, png_bomb(), content_type="image/png", name="bomb.png"), 413, "too large"),
    (lambda c: raw(c, b"GIF89a, but not really"), 415, "not a readable image"),
    (lambda c: raw(c, GOOD + b"\0" * 2_000_000), 413, "larger than the server accepts"),
    (lambda c: raw(c, b'{"image": "photo.jpg"}', "application/json"), 415, "'application/json' is not an image"),
    (lambda c: raw(c, GOOD, None), 415, "without a Content-Type"),
    (lambda c: raw(c, b"--other\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nxx\r\n--other--\r\n",
                   "multipart/form-data; boundary=expected"), 400, "does not contain its boundary"),
    (lambda c: raw(c, b"anything", "multipart/form-data"), 400, "declares no boundary"),
])
def test_every_bad_request_gets_a_4xx_line_and_the_server_goes_on(client, send, status, message):
    response = send(client)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and "\n" not in response.json()["error"]
    assert post(client, GOOD).status_code == 200


def test_batching_off_answers_good_and_bad_requests(checkpoint):
    """With ``max_batch_size=1`` LitServe hands ``predict`` one upload, not a list."""
    server = build_server(checkpoint, accelerator="cpu", max_batch_size=1, detect_faces=False)
    with wrap_litserve_start(server) as started, TestClient(started.app) as unbatched:
        assert post(unbatched, b"not a photo").status_code == 415
        response = post(unbatched, GOOD)
        assert response.status_code == 200, response.text
        assert len(response.json()["faces"]) == 1


def test_health_info_and_the_page(client):
    assert client.get("/health").status_code == 200
    info = client.get("/info").json()["model"]
    assert info["recipe"] == "default" and info["input_size"] == 32 and info["classes"] == list(GROUP_LABELS)
    assert info["ages"] and info["age_interval_level"] == 0.8 and info["temperature"] > 0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/app.js">' in page.text and "cdn" not in page.text.lower()
    assert "fetch(\"/predict\"" in client.get("/app.js").text and client.get("/style.css").status_code == 200


def test_the_command_checks_its_flags_in_one_line(checkpoint, capsys, tmp_path):
    for argv, message in [(["--ckpt", str(tmp_path / "missing.ckpt")], "does not exist"),
                          (["--ckpt", str(checkpoint), "--max_batch_size", "0", "--no-detect_faces"],
                           "--max_batch_size must be at least 1"),
                          (["--ckpt", str(checkpoint), "--min_face", "0"], "--min_face must be at least 1")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stderr.read()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.3)


@pytest.mark.slow
def test_the_server_starts_from_a_checkpoint_answers_and_stops_on_sigterm(checkpoint, tmp_path):
    face_detector()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "project.serve", "--ckpt", str(checkpoint), "--port",
                                str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert wait_for(f"http://127.0.0.1:{port}/health", process) == b"ok"
        assert f"http://127.0.0.1:{port}/" in process.stdout.readline()
        body, boundary = multipart(jpeg(two_face_photo()))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert [face["box"][0] < 320 for face in answer["faces"]] == [True, False]  # both faces, left to right
        assert all(face["score"] > 0 and len(face["landmarks"]) == 3 for face in answer["faces"])
        raw = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=jpeg(two_face_photo()), method="POST",
                                     headers={"Content-Type": "image/jpeg"})  # curl --data-binary, as people send
        with urllib.request.urlopen(raw, timeout=60) as response:
            assert json.loads(response.read())["faces"] == answer["faces"]
    finally:
        code = stop(process)
    assert code == 0, process.stderr.read()[-3000:]
    assert serving_processes(port) == []  # its worker and HTTP processes went with it
    assert list(tmp_path.iterdir()) == []  # no generated client file in the user's folder


def serving_processes(port: int) -> list:
    """Processes still running with ``--port PORT`` on their command line."""
    found = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.split()
    return [pid for pid in found if int(pid) != os.getpid()]


def stop(process: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM, as ``docker stop`` or systemd would send; the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def multipart(data: bytes, field: str = "image", name: str = "photo.jpg"):
    boundary = "testboundary7d1"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, boundary
