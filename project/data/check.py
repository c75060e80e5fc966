"""``--check_data``: scan a dataset and report what a training run would skip and which photos it holds twice,
without training - for people curating their own set.

The report is the one a run writes (``skipped_files.txt``, ``duplicates.csv``), plus the grouped split a new run
with this seed and copy policy would make: how many images each side gets and how many the policy leaves out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np

from project.common.errors import UserError
from project.data.datasets import find_undecodable
from project.data.duplicates import REPORT_FILE_NAME, copies_in, copies_summary, write_report
from project.data.scan import UNDECODABLE_REASON
from project.data.sources import resolve_data_dir, scan_source
from project.data.split import SPLITS, apply_copy_policy, new_split

SKIPPED_REPORT_NAME = "skipped_files.txt"


def check_data(data_dir: os.PathLike, cache_dir: Path, report_dir: Path, *, seed: int = 42,
               copy_labels: str = "drop", num_workers: int = 2) -> List[str]:
    """Scan and decode every image of ``data_dir``, find its copies, write the reports into ``report_dir``; returns
    the lines to print."""
    source = resolve_data_dir(data_dir, cache_dir)
    scan = scan_source(source)
    undecodable = set(find_undecodable(scan.root, scan.items, num_workers))
    scan.skipped += [(scan.items[row].relpath, UNDECODABLE_REASON) for row in sorted(undecodable)]
    usable = np.array([row for row in range(len(scan.items)) if row not in undecodable], dtype=np.int64)
    copies = copies_in(scan.root, scan.items, cache_dir, max(1, num_workers))
    rows, units, left_out = apply_copy_policy(scan.items, usable, copies.groups, copy_labels)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{data_dir}: {len(usable):,} usable images of {scan.files_seen:,} files"]
    if scan.skipped:
        (report_dir / SKIPPED_REPORT_NAME).write_text("".join(f"{name}\t{reason}\n" for name, reason in scan.skipped))
        lines.append(f"{scan.skipped_summary()} (all in {report_dir / SKIPPED_REPORT_NAME})")
    lines.append(copies_summary(copies, scan.items))
    if copies.groups:
        write_report(report_dir / REPORT_FILE_NAME, copies, scan.items, left_out)
        lines.append(f"every group, its ages and what a new run keeps: {report_dir / REPORT_FILE_NAME}")
    try:
        split = new_split(scan.items, rows, seed, units)
    except UserError as err:
        return lines + [f"a new run could not split this set: {err}"]
    sizes = " / ".join(f"{len(split.indices[name]):,}" for name in SPLITS)
    lines.append(f"a new run (--seed {seed}, --copy_labels {copy_labels}) would train / validate / test on {sizes} "
                 f"images, leaving out {len(left_out):,} copies")
    return lines
