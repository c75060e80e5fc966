"""Archives (``UTKFace.tar.gz``) extracted once into the cache.

Never beside the archive: the user's data folder may be shared or read-only. The target folder's name holds the
archive's content hash, so a replaced archive is extracted afresh while an unchanged one is extracted only once,
under a file lock (DDP ranks and concurrent runs wait for one extraction) and atomically (a killed extraction
leaves no half folder behind).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from filelock import FileLock

from project.common.errors import UserError
from project.common.progress import progress_interval
from project.data.scan import ARCHIVE_DUPLICATES_FILE

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """A file named like a tar archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _file_digest(path: Path) -> str:
    """The archive's content hash; remembered per (path, size, mtime), since prepare_data and setup both ask."""
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def extraction_target(archive: Path, cache_dir: Path) -> Path:
    """Where ``archive`` is (or will be) extracted: ``<cache_dir>/extracted/<name>-<content hash>``."""
    return Path(cache_dir) / "extracted" / f"{_archive_stem(archive)}-{_file_digest(archive)}"


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` once, atomically.

    Members go into a temporary sibling folder that is renamed to ``target`` only when extraction finished, so a
    run killed half-way leaves no ``target`` and the next run starts over (removing the leftover). Extraction uses
    tarfile's ``data`` filter: no absolute paths, no ``..``, no links out of the folder, no device files.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):  # a second process waits, then finds it done
        if target.is_dir():
            return target
        for leftover in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        try:
            _extract_members(archive, partial)
            os.replace(partial, target)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise UserError(
                f"{archive} is not a readable tar archive ({type(err).__name__}: {err}); re-download "
                f"UTKFace.tar.gz or pass the extracted folder as --data_dir"
            ) from None
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return target


def _extract_members(archive: Path, folder: Path) -> None:
    """Extract every member once (a repeated name keeps its first copy, recorded for the skipped-file report)."""
    from tqdm.auto import tqdm

    seen, duplicates = set(), []
    with tarfile.open(archive, "r:*") as tar, tqdm(desc=f"Extracting {archive.name}", unit=" files",
                                                   mininterval=progress_interval()) as bar:
        for member in tar:
            if member.name in seen:
                duplicates.append(member.name)
                continue
            seen.add(member.name)
            tar.extract(member, folder, filter="data")
            bar.update(1)
    if duplicates:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARCHIVE_DUPLICATES_FILE).write_text("".join(f"{name}\n" for name in duplicates))
