"""The `ReportSection` contract: a section defined outside the report package, as a method defines its own, is
rendered into report.md after the layers, written at report.json's top level under its key and read back with its
class, and has its plots written with the report's; keys are registered once, and a registered section the report
lacks is null in report.json and None as an attribute."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pytest

from compressor.report import Report, ReportSection, plot_files, render_markdown, write_report
from compressor.report.section import SECTIONS


@pytest.fixture(autouse=True)
def _forget_test_sections():
    """A registered section is a key of every report.json written after it: the ones a test defines go with it."""
    registered = dict(SECTIONS)
    yield
    SECTIONS.clear()
    SECTIONS.update(registered)


def _write_note_png(report: Report, path: Path) -> Path:
    plt.imsave(path, np.full((8, 8), len(report.layers)), format="png")
    return path


def test_a_section_of_its_own_is_rendered_saved_read_back_and_plotted(make_report, tmp_path):
    @dataclass
    class NoteSection(ReportSection):
        key: ClassVar[str] = "note"

        text: str
        count: int = 0

        def markdown(self, report: Report) -> list[str]:
            return ["## Note", "", f"{self.text}: {self.count} of {len(report.layers)} layers.", ""]

        def plots(self, report: Report):
            return {"note.png": _write_note_png}

    report = make_report(sections={"note": NoteSection("pruned", 2)})
    markdown = render_markdown(report)
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings == ["# Compression report: lenet5", "## Summary", "## ONNX", "## Latency", "## Layers", "## Note",
                        "## Passes"]
    assert "\n## Note\n\npruned: 2 of 2 layers.\n\n## Passes\n" in markdown

    data = report.to_dict()
    assert data["note"] == {"text": "pruned", "count": 2} and "sections" not in data
    loaded = Report.from_dict(json.loads(json.dumps(data)))
    assert loaded == report and type(loaded.sections["note"]) is NoteSection
    assert report.note is report.sections["note"]

    assert plot_files(report) == ["sparsity.png", "note.png"]
    write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.png", "report.json", "report.md", "sparsity.png"]
    assert plt.imread(tmp_path / "note.png").shape[:2] == (8, 8)
    assert json.loads((tmp_path / "report.json").read_text())["note"] == {"text": "pruned", "count": 2}
    assert (tmp_path / "report.md").read_text() == markdown


def test_a_registered_section_the_report_lacks_is_null_and_none(make_report):
    @dataclass
    class NoteSection(ReportSection):
        key: ClassVar[str] = "note"

        text: str

    report = make_report()
    data = report.to_dict()
    assert data["note"] is None
    assert report.note is None
    assert Report.from_dict(data) == report
    with pytest.raises(AttributeError):
        report.not_a_section


def test_keys_naming_no_registered_section_are_ignored(make_report):
    data = {**make_report().to_dict(), "unknown": {"text": "from a method not loaded"}}
    assert Report.from_dict(data) == make_report()


def test_a_key_belongs_to_one_section_class_and_a_base_without_one_registers_none():
    @dataclass
    class NoteSection(ReportSection):
        key: ClassVar[str] = "note"

    with pytest.raises(ValueError, match="'note' is taken"):
        @dataclass
        class OtherNoteSection(ReportSection):
            key: ClassVar[str] = "note"

    @dataclass
    class NoteBase(ReportSection):
        pass

    assert SECTIONS["note"] is NoteSection and NoteBase not in SECTIONS.values()

    # A dataclass with slots is a new class of the same name: it takes its key back.
    @dataclass(slots=True)
    class SlottedSection(ReportSection):
        key: ClassVar[str] = "slotted"

    assert SECTIONS["slotted"] is SlottedSection
