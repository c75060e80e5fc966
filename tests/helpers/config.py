"""Run settings for tests, built by the real command-line parser (the same path a user's flags take)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from project.cli.train import get_args_parser, settings_from_args
from project.config.settings import RunSettings


def fast_flags(data_dir: Path, cache_dir: Path, root: Path, *extra: str) -> List[str]:
    """Fast training flags: tiny images, random backbone, small batches, CPU fp32, everything in temp folders."""
    return ["--data_dir", str(data_dir), "--image_size", "32", "--backbone_weights", "none",
            "--cache_dir", str(cache_dir), "--default_root_dir", str(root), "--num_workers", "0",
            "--batch_size", "8", "--accelerator", "cpu", "--precision", "32", *extra]


def settings_for(flags: Sequence[str]) -> RunSettings:
    """The :class:`RunSettings` the command line would build from ``flags``."""
    return settings_from_args(get_args_parser().parse_args(list(flags)))


def run_dir(root: Path, version: int = 0) -> Path:
    return Path(root) / "lightning_logs" / f"version_{version}"
