"""Train and test the age-group classifier: the script entry point, and where ``LitClassifier`` is imported from.

    python project/lit_classifier_main.py --data_dir path/to/UTKFace.tar.gz
    python project/lit_classifier_main.py --test_only --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt \\
        --data_dir path/to/UTKFace.tar.gz

From Python, as in any Lightning project::

    model = LitClassifier.from_recipe("default")
    datamodule = UTKFaceDataModule.from_path("path/to/UTKFace.tar.gz", model)
    trainer = pl.Trainer(max_epochs=20)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, ckpt_path="best")

The model lives in :mod:`project.training.module`, the command line in :mod:`project.cli.train` (see ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.cli.train import main  # noqa: E402
from project.data.datamodule import UTKFaceDataModule  # noqa: E402
from project.training.module import LitClassifier  # noqa: E402

__all__ = ["LitClassifier", "UTKFaceDataModule", "cli_main"]


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see ``--help``)."""
    return main(argv)


if __name__ == "__main__":
    sys.exit(cli_main())
