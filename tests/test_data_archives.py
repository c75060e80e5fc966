"""Archives: extracted once into the cache, atomically, safely; corrupt ones and repeated names reported."""

import os
import tarfile

import pytest
from helpers.synthetic import pack_like_the_official_archive, write_synthetic_utkface

from project.common.errors import UserError
from project.data.archives import extraction_target
from project.data.scan import scan_utkface
from project.data.sources import resolve_data_dir


def test_archive_is_extracted_once_and_half_extraction_is_redone(utkface_archive, cache_dir):
    target = extraction_target(utkface_archive, cache_dir)
    assert cache_dir in target.parents  # never beside the user's archive
    leftover = target.parent / f".{target.name}.partial-99999"
    leftover.mkdir(parents=True)
    (leftover / "half.jpg").write_bytes(b"\xff\xd8\xff")
    root = resolve_data_dir(utkface_archive, cache_dir)
    assert root == target and not leftover.exists()
    assert len(scan_utkface(root).items) == 60
    marker = root / "UTKFace" / "marker"
    marker.write_text("x")
    assert resolve_data_dir(utkface_archive, cache_dir) == root
    assert marker.exists()  # not extracted twice


def test_a_folder_is_used_as_it_is(utkface_dir, cache_dir):
    assert resolve_data_dir(utkface_dir, cache_dir) == utkface_dir and not cache_dir.exists()


@pytest.mark.parametrize("data_dir, message", [(None, "no dataset given"), ("nowhere", "does not exist")])
def test_missing_data_is_a_one_line_error(tmp_path, cache_dir, data_dir, message):
    with pytest.raises(UserError, match=message):
        resolve_data_dir(None if data_dir is None else tmp_path / data_dir, cache_dir)


def test_corrupt_archive_is_a_user_error(tmp_path, cache_dir):
    archive = tmp_path / "UTKFace.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(500))
    with pytest.raises(UserError, match="not a readable tar archive"):
        resolve_data_dir(archive, cache_dir)
    assert not extraction_target(archive, cache_dir).exists()


def test_archive_cannot_write_outside_its_folder(tmp_path, cache_dir):
    archive = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    with pytest.raises(UserError):
        resolve_data_dir(archive, cache_dir)
    assert not (cache_dir / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_duplicate_names_in_an_archive_are_reported(tmp_path, cache_dir):
    source = tmp_path / "src" / "UTKFace"
    write_synthetic_utkface(source, per_group=4)
    archive = pack_like_the_official_archive(source, tmp_path / "UTKFace.tar.gz")
    first = sorted(source.iterdir())[0]
    with tarfile.open(archive, "w:gz") as tar:  # repack with the first file added twice
        tar.add(source, arcname="UTKFace")
        tar.add(first, arcname=f"UTKFace/{first.name}")
    scan = scan_utkface(resolve_data_dir(archive, cache_dir))
    assert len(scan.items) == 20
    assert scan.skipped == [(f"UTKFace/{first.name}", "duplicate name in the archive (first copy kept)")]
    assert scan.skipped_summary().startswith("skipped 1 of 21 files")
