"""The package layout ARCHITECTURE.md describes: entry points alone at the top, every module short."""

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1] / "project"
#: ``python project/<entry>.py`` and the console scripts name these; everything else lives in a layer's package
ENTRY_POINTS = {"__init__.py", "lit_classifier_main.py", "predict.py", "export.py", "bundle.py"}
MAX_LINES = 400


def test_only_entry_points_are_loose_in_the_project_folder():
    assert {path.name for path in PROJECT.glob("*.py")} == ENTRY_POINTS


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(PROJECT)): count for path in PROJECT.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"
