"""kill -9 in the middle of a feature-cache build or an archive extraction: the next run repairs it.

(kill -9 in the middle of a fit followed by ``--resume`` is in test_cli.py.)
"""

import json
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_synthetic_utkface
from project.datasets.utkface import extraction_target, resolve_data_dir, scan_utkface
from project.features import FeatureCacheBuilder
from project.models.backbone import build_backbone

REPO = Path(__file__).resolve().parents[1]
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


def seeded_backbone():
    torch.manual_seed(123)
    return build_backbone("none")


def test_sigkill_during_feature_extraction_resumes(tmp_path):
    data = tmp_path / "UTKFace"
    write_synthetic_utkface(data, per_group=40)  # 200 images
    cache = tmp_path / "cache"
    process = start(f"""
        import time, torch
        import project.features as features
        from project.datasets.utkface import scan_utkface
        from project.models.backbone import build_backbone
        features._FLUSH_EVERY_S = 0.0           # record progress after every batch
        torch.manual_seed(123)
        backbone = build_backbone("none")
        forward = backbone.forward
        backbone.forward = lambda x: (time.sleep(0.2), forward(x))[1]   # slow enough to be caught mid-way
        items = scan_utkface(__import__("pathlib").Path({str(data)!r})).items
        features.FeatureCacheBuilder(backbone, 32, "32-true", {str(cache)!r}, batch_size=8, num_workers=0,
                                     progress=False).build({str(data)!r}, items)
    """)

    def some_rows_flushed():
        progress = list(cache.glob("*.progress.json"))
        return progress and json.loads(progress[0].read_text())["rows_done"] >= 40

    kill_when(process, some_rows_flushed)
    assert not list(cache.glob("vgg16-features-*[0-9a-f].npy"))  # no final file from the killed run
    done = json.loads(next(cache.glob("*.progress.json")).read_text())["rows_done"]

    items = scan_utkface(data).items
    builder = FeatureCacheBuilder(seeded_backbone(), 32, "32-true", cache, batch_size=8, num_workers=0,
                                  progress=False)
    resumed = builder.build(data, items)
    assert builder.last_build_stats["images"] == len(items) - done  # resumed, not restarted
    fresh = FeatureCacheBuilder(seeded_backbone(), 32, "32-true", tmp_path / "fresh", batch_size=8, num_workers=0,
                                progress=False).build(data, items)
    assert np.array_equal(np.asarray(resumed.array), np.asarray(fresh.array))


def test_sigkill_during_archive_extraction_is_redone(tmp_path):
    source = tmp_path / "src" / "UTKFace"
    write_synthetic_utkface(source, per_group=20, size=24)
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="UTKFace")
    cache = tmp_path / "cache"
    target = extraction_target(archive, cache)
    process = start(f"""
        import tarfile, time
        from project.datasets.utkface import resolve_data_dir
        extract = tarfile.TarFile.extract
        def slow_extract(self, *args, **kwargs):
            time.sleep(0.05)
            return extract(self, *args, **kwargs)
        tarfile.TarFile.extract = slow_extract
        resolve_data_dir({str(archive)!r}, __import__("pathlib").Path({str(cache)!r}))
    """)

    def half_extracted():
        partial = list(target.parent.glob(f".{target.name}.partial-*/UTKFace/*.jpg"))
        return len(partial) >= 10

    kill_when(process, half_extracted)
    assert not target.exists()  # the killed run never published a half folder
    root = resolve_data_dir(archive, cache)
    assert root == target and len(scan_utkface(root).items) == 100
    assert not list(target.parent.glob(f".{target.name}.partial-*"))


def test_duplicate_names_in_an_archive_are_reported(tmp_path, cache_dir):
    source = tmp_path / "src"
    write_synthetic_utkface(source / "UTKFace", per_group=4)
    first = sorted((source / "UTKFace").iterdir())[0]
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "UTKFace", arcname="UTKFace")
        tar.add(first, arcname=f"UTKFace/{first.name}")  # the same name again
    scan = scan_utkface(resolve_data_dir(archive, cache_dir))
    assert len(scan.items) == 20
    assert scan.skipped == [(f"UTKFace/{first.name}", "duplicate name in the archive (first copy kept)")]
    assert scan.skipped_summary().startswith("skipped 1 of 21 files")
