"""Crash tests: train with the real command-line settings, and SIGKILL this process at ``EPOCH:BATCH``.

    python tests/helpers/kill_at.py EPOCH:BATCH <training flags...>

Proves that ``--resume`` loses nothing: it lives here, not in the product, which has no hidden crash hook.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class KillAt(Callback):
    """SIGKILL this process when training reaches batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]
    from helpers.config import settings_for
    from project.training.run import train

    epoch, batch = (int(v) for v in sys.argv[1].split(":"))
    train(settings_for(sys.argv[2:]), callbacks=[KillAt(epoch, batch)])
