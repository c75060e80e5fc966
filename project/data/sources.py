"""What ``--data_dir`` names: a folder of UTKFace images, a UTKFace archive, or a labels table of your own faces."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from project.common.errors import UserError
from project.data.archives import extract_archive, extraction_target, is_archive
from project.data.labels import is_labels_table, scan_labels_table
from project.data.scan import ScanResult, scan_utkface

#: What the one-line errors suggest passing.
KINDS = "a UTKFace folder, UTKFace.tar.gz or a .csv/.tsv labels table"


def resolve_data_dir(data_dir: Optional[os.PathLike], cache_dir: Path) -> Path:
    """The folder of images or the labels table ``data_dir`` names (an archive is extracted once into
    ``cache_dir`` first)."""
    if data_dir is None or str(data_dir) == "":
        raise UserError(f"no dataset given: pass --data_dir PATH ({KINDS})")
    path = Path(data_dir).expanduser()
    if path.is_dir() or is_labels_table(path):
        return path
    if is_archive(path):
        return extract_archive(path, extraction_target(path, cache_dir))
    if path.exists():
        raise UserError(f"--data_dir {path} is neither a folder, a .tar.gz/.tgz/.tar archive nor a .csv/.tsv labels "
                        f"table")
    raise UserError(f"--data_dir {path} does not exist; pass {KINDS}")


def scan_source(source: Path) -> ScanResult:
    """The usable images of a resolved source (a folder, or a labels table) and what was skipped; a one-line error
    when there are none."""
    if source.is_file():
        scan = scan_labels_table(source)
        if not scan.items:
            raise UserError(f"no usable rows in the labels table {source}: {scan.skipped_summary()}"
                            if scan.skipped else f"the labels table {source} has no rows")
        return scan
    scan = scan_utkface(source)
    if not scan.items:
        raise UserError(f"no UTKFace images in {source}: expected files named like "
                        f"25_0_1_20170116174525125.jpg.chip.jpg (or pass a .csv/.tsv labels table)")
    return scan
