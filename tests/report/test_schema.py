"""report.json's shape: the methods' sections stand at the top level, each under its key, where the report's own
fields would; every registered section is a key whatever the method (null when the run lacks it); and a file read
back rebuilds each section with its class."""

import dataclasses
import json

from compressor.report import Report, read_sections
from compressor.report.section import SECTIONS

KEYS_BEFORE_THE_SECTIONS = ["tool_version", "model", "arch", "input_shape", "data", "method", "target", "pattern",
                            "epochs", "method_config", "dense", "compressed", "layers", "onnx", "latency", "passes",
                            "seconds", "seconds_per_epoch", "structure", "device", "processes", "training_cost",
                            "training"]


def test_every_registered_section_is_a_key_in_place_of_the_field(make_report):
    data = make_report().to_dict()
    assert list(data) == [*KEYS_BEFORE_THE_SECTIONS, *SECTIONS, "latency_target"]
    assert [key for key in SECTIONS if key in ("snapshot", "switcher")] == ["snapshot", "switcher"]
    assert all(data[key] is None for key in SECTIONS)


def test_the_methods_sections_round_trip_and_read_as_attributes(make_report, snapshot_section, switcher_section):
    for section in (snapshot_section, switcher_section):
        report = make_report(method=section.key, sections={section.key: section})
        data = json.loads(json.dumps(report.to_dict()))
        assert data[section.key] == dataclasses.asdict(section)
        assert [key for key in SECTIONS if data[key] is not None] == [section.key]
        loaded = Report.from_dict(data)
        assert loaded == report and getattr(loaded, section.key) == section
    swept = Report.from_dict(make_report(sections={"snapshot": snapshot_section}).to_dict()).snapshot
    assert swept.sweep[1].compression == 1016 / 300


def test_read_sections_takes_the_registered_keys_that_hold_a_value(snapshot_section, switcher_section):
    facts = {"config": {"sweep": 2}, "snapshot": dataclasses.asdict(snapshot_section), "switcher": None}
    assert read_sections(facts) == {"snapshot": snapshot_section}
    # An empty one holds no section.
    assert read_sections({"switcher": dataclasses.asdict(switcher_section), "snapshot": {}}) == {
        "switcher": switcher_section}
