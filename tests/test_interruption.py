"""kill -9 in the middle of a fit, a feature-cache build or an archive extraction: nothing is lost."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers.config import run_dir
from helpers.paths import REPO
from helpers.synthetic import pack_like_the_official_archive, write_synthetic_utkface

from project.cli.train import main
from project.data.archives import extraction_target
from project.data.feature_cache import FeatureCacheBuilder
from project.data.scan import scan_utkface
from project.data.sources import resolve_data_dir
from project.models.backbone import build_backbone

pytestmark = pytest.mark.slow


def start(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true (fail if it finishes or times out first)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "never reached the kill point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("recipe", [[], ["--recipe", "finetune"]], ids=["default", "finetune"])
def test_resume_after_sigkill_reaches_the_same_metrics(flags, runs, tmp_path, recipe):
    """Kill -9 in the middle of epoch 2, resume: the final metrics equal an uninterrupted run's (also where block 5
    trains with its own learning rate and optimizer state)."""
    flags = flags + recipe
    reference = tmp_path / "reference"
    main(flags + ["--max_epochs", "4", "--default_root_dir", str(reference)])
    expected = json.loads((run_dir(reference) / "test_metrics.json").read_text())

    killed = subprocess.run([sys.executable, "tests/helpers/kill_at.py", "2:3", *flags, "--max_epochs", "4"],
                            cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run_dir(runs) / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir(runs) / "test_metrics.json").exists()
    resumed = subprocess.run([sys.executable, "project/lit_classifier_main.py", *flags, "--max_epochs", "4",
                              "--resume"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((run_dir(runs) / "test_metrics.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "confusion_matrix", "epochs_trained"):
        assert got[key] == expected[key], key
    weights = [torch.load(run_dir(root) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for root in (reference, runs)]
    for key, tensor in weights[0].items():  # every weight, bit for bit (metrics alone can hide a changed draw)
        assert torch.equal(weights[1][key], tensor), key


def seeded_backbone():
    torch.manual_seed(123)
    return build_backbone("none")  # the same weights as the killed process's


def test_sigkill_during_feature_extraction_resumes(tmp_path):
    data = tmp_path / "UTKFace"
    write_synthetic_utkface(data, per_group=40)  # 200 images
    cache = tmp_path / "cache"
    process = start(f"""
        import time, torch
        import project.data.feature_cache as feature_cache
        from project.data.scan import scan_utkface
        from project.models.backbone import build_backbone
        feature_cache._FLUSH_EVERY_S = 0.0           # record progress after every batch
        torch.manual_seed(123)
        backbone = build_backbone("none")
        forward = backbone.forward
        backbone.forward = lambda x: (time.sleep(0.2), forward(x))[1]   # slow enough to be caught mid-way
        items = scan_utkface(__import__("pathlib").Path({str(data)!r})).items
        feature_cache.FeatureCacheBuilder(backbone, "32-true", {str(cache)!r}, batch_size=8, num_workers=0,
                                          progress=False).build({str(data)!r}, items, 32)
    """)

    def some_rows_flushed():
        progress = list(cache.glob("*.progress.json"))
        return progress and json.loads(progress[0].read_text())["rows_done"] >= 40

    kill_when(process, some_rows_flushed)
    assert not list(cache.glob("vgg16-features-*[0-9a-f].npy"))  # no final file from the killed run
    done = json.loads(next(cache.glob("*.progress.json")).read_text())["rows_done"]

    items = scan_utkface(data).items
    builder = FeatureCacheBuilder(seeded_backbone(), "32-true", cache, batch_size=8, num_workers=0, progress=False)
    resumed = builder.build(data, items, 32)
    assert builder.last_build_stats["images"] == len(items) - done  # resumed, not restarted
    fresh = FeatureCacheBuilder(seeded_backbone(), "32-true", tmp_path / "fresh", batch_size=8, num_workers=0,
                                progress=False).build(data, items, 32)
    assert np.array_equal(np.asarray(resumed.array), np.asarray(fresh.array))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shard_processes(data, cache, kill_rank=None, kill_after=1):
    """Both processes of a two-process sharded build (``tests/helpers/shard_build.py``), finished."""
    port = free_port()
    processes = [subprocess.Popen([sys.executable, "tests/helpers/shard_build.py", str(rank), "2", str(port),
                                   str(data), str(cache)] + ([str(kill_after)] if rank == kill_rank else []),
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in range(2)]
    try:
        return [(p.wait(timeout=180), *p.communicate()) for p in processes]
    finally:
        for process in processes:
            process.kill()


def test_two_processes_share_a_build_and_a_killed_one_resumes_its_block(utkface_dir, tmp_path):
    """kill -9 of one of two processes building one cache: the rerun computes only the missing rows, and the file
    is byte-identical to a one-process build."""
    cache = tmp_path / "cache"
    results = shard_processes(utkface_dir, cache, kill_rank=1, kill_after=2)
    assert results[1][0] == -9
    assert results[0][0] != 0  # the other process does not finish a build alone
    assert not list(cache.glob("vgg16-features-*[0-9a-f].npy"))  # no final file
    # 60 images, batches of 8: blocks 0:32 and 32:60; the killed process recorded its first two batches
    assert json.loads(next(cache.glob("*.progress-32-60.json")).read_text())["rows_done"] == 48

    results = shard_processes(utkface_dir, cache)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    stats = [json.loads(out) for _, out, _ in results]
    assert stats[1]["images"] == 12  # the killed block resumed at row 48
    meta = json.loads(next(cache.glob("vgg16-features-*.json")).read_text())
    assert meta["stats"]["processes"] == 2 and [s["rows"] for s in meta["stats"]["shards"]] == [[0, 32], [32, 60]]
    assert not list(cache.glob("*.progress*")) and not list(cache.glob("*.partial.npy"))

    items = scan_utkface(utkface_dir).items
    alone = FeatureCacheBuilder(seeded_backbone(), "32-true", tmp_path / "alone", batch_size=8, num_workers=0,
                                progress=False).build(utkface_dir, items, 32)
    shared = np.load(next(cache.glob("vgg16-features-*[0-9a-f].npy")))
    assert shared.tobytes() == np.asarray(alone.array).tobytes()


def test_sigkill_during_archive_extraction_is_redone(tmp_path):
    source = tmp_path / "src" / "UTKFace"
    write_synthetic_utkface(source, per_group=20, size=24)
    archive = pack_like_the_official_archive(source, tmp_path / "UTKFace.tar.gz")
    cache = tmp_path / "cache"
    target = extraction_target(archive, cache)
    process = start(f"""
        import tarfile, time
        from pathlib import Path
        from project.data.sources import resolve_data_dir
        extract = tarfile.TarFile.extract
        def slow_extract(self, *args, **kwargs):
            time.sleep(0.05)
            return extract(self, *args, **kwargs)
        tarfile.TarFile.extract = slow_extract
        resolve_data_dir(Path({str(archive)!r}), Path({str(cache)!r}))
    """)

    def half_extracted():
        partial = list(target.parent.glob(f".{target.name}.partial-*/UTKFace/*.jpg"))
        return len(partial) >= 10

    kill_when(process, half_extracted)
    assert not target.exists()  # the killed run never published a half folder
    root = resolve_data_dir(archive, cache)
    assert root == target and len(scan_utkface(root).items) == 100
    assert not list(target.parent.glob(f".{target.name}.partial-*"))
