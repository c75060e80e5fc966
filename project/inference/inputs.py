"""The files a prediction command reads, and the names their annotated copies get."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

from project.common.errors import UserError
from project.core.transforms import IMAGE_SUFFIXES


def find_images(arguments: Sequence[str]) -> List[Tuple[Path, Path]]:
    """``(path, relative name for --annotate)`` for every file argument and every image file under a folder.

    Files named on the command line are always tried (an unreadable one gets an error row); folders are walked
    recursively for image suffixes, skipping hidden files such as macOS ``._*`` copies.
    """
    found: List[Tuple[Path, Path]] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found.extend((p, p.relative_to(path)) for p in files)
        elif path.exists():
            found.append((path, Path(path.name)))
        else:
            raise UserError(f"{argument} does not exist; pass image files or folders of images")
    if not found:
        raise UserError(f"no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found in "
                        f"{', '.join(arguments)}")
    return found


def unique_names(names: Sequence[Path]) -> List[Path]:
    """``names`` with ``_2``, ``_3``... added where two inputs would write the same annotated file."""
    seen, unique = set(), []
    for name in names:
        candidate, counter = name, 1
        while candidate.as_posix().lower() in seen:
            counter += 1
            candidate = name.with_name(f"{name.stem}_{counter}{name.suffix}")
        seen.add(candidate.as_posix().lower())
        unique.append(candidate)
    return unique
