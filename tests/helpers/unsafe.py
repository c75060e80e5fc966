"""Files that must never be trusted: a pickle that would run code when loaded."""

import pickle
from pathlib import Path


class CreatesAFile:
    """Unpickling this would create ``target``: a weights file or checkpoint must never run it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def write_code_pickle(path: Path, key: str, target: Path) -> Path:
    """A pickle of ``{key: CreatesAFile(target)}`` at ``path``."""
    with open(path, "wb") as handle:
        pickle.dump({key: CreatesAFile(str(target))}, handle)
    return path
