"""README, the model card and docs/ stay true: every relative link and anchor resolves, README stays a front door,
and its quick starts run as written (the predict one on a public-domain photo with the bundled model)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
from helpers.paths import REPO

from project.core.age_groups import GROUP_LABELS

DOCUMENTS = [REPO / "README.md", REPO / "MODEL_CARD.md", REPO / "ARCHITECTURE.md",
             *sorted((REPO / "docs").glob("*.md"))]
#: a Markdown link or image ``[text](target)``, and an HTML ``src``/``href``
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|(?:src|href)=\"([^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(path: Path) -> str:
    """A document without its code blocks and inline code (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but ``-`` and ``_``), spaces to ``-``."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every heading anchor of a Markdown file (repeated headings get ``-1``, ``-2``, ... as on GitHub)."""
    seen: Dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(path: Path) -> List[str]:
    broken = []
    for match in LINK.finditer(prose(path)):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    assert path.is_file(), path
    assert broken_links(path) == []


def test_the_link_check_finds_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Some section: here\n\n[ok](#some-section-here) [bad](#nowhere) "
                    "[missing](other.md) `[code](ignored.md)`\n")
    assert broken_links(page) == ["#nowhere (no such heading)", "other.md (no such file)"]


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:80])
    for command in ("pip install", "age-classifier-predict", "lit_classifier_main.py", "age-classifier-serve",
                    "python -m pytest -q"):
        assert command in first, command


def readme_block(language: str, containing: str) -> str:
    """The first ``language`` code block of README that contains ``containing``."""
    for block in re.findall(rf"^```{language}\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M):
        if containing in block:
            return block
    raise AssertionError(f"README has no {language} block with {containing!r}")


def test_readme_predict_quick_start_runs_as_written_with_the_bundled_model(tmp_path):
    """The first command README gives, on scikit-image's public-domain astronaut portrait, offline."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "photo.jpg", quality=95)
    [command] = [line.split("#")[0].split() for line in readme_block("bash", "age-classifier-predict").splitlines()
                 if line.startswith("age-classifier-predict")][:1]
    assert command == ["age-classifier-predict", "photo.jpg"]
    program = shutil.which("age-classifier-predict") or str(Path(sys.executable).parent / "age-classifier-predict")
    done = subprocess.run([program, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model: ") and "utkface" in lines[0]
    [row] = [line for line in lines if line.startswith("photo.jpg")]  # one face found: file, box, group, age, ...
    box, group, age = row.split()[1:4]
    assert re.fullmatch(r"\d+,\d+,\d+,\d+", box) and group in GROUP_LABELS and re.fullmatch(r"\d+", age)


def test_readme_python_quick_start_runs_on_synthetic_faces(utkface_dir, tmp_path, monkeypatch):
    """README's "From Python": fit, test, and a saved checkpoint re-tested on its own split.json (1 epoch, 32 px,
    a random backbone, on the synthetic faces)."""
    code = readme_block("python", "UTKFaceDataModule.from_path")
    replacements = {'"path/to/UTKFace.tar.gz"': repr(str(utkface_dir)),
                    'from_recipe("default")': 'from_recipe("default", backbone_weights="none", image_size=32)',
                    "max_epochs=20": "max_epochs=1, accelerator='cpu', enable_progress_bar=False"}
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: Dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    assert (tmp_path / "lightning_logs").is_dir()
    assert 0.0 <= namespace["retest"][0]["test_acc"] <= 1.0
