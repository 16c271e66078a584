"""A method's own part of the report: a `ReportSection` dataclass holds what only that method records, kept in
report.json at the top level under the section's key, and renders its own report.md lines and PNG plots. A
subclass registers itself by its key when it is defined, so that a report read back rebuilds each section with
its class while the report knows nothing of the methods that define them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from compressor.report.schema import Report

# Section classes by key, in the order they were defined: the order of their keys in report.json.
SECTIONS: dict[str, type[ReportSection]] = {}


@dataclass
class ReportSection(ABC):
    """What one method records beyond the common report; subclasses are dataclasses that set `key`."""

    key: ClassVar[str]  # its key in report.json and in `Report.sections`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass without a key of its own (a base for others) is no section of report.json.
        if "key" not in cls.__dict__:
            return
        known = SECTIONS.get(cls.key)
        # The same class made again (`dataclass(slots=True)` makes a new one, named but not yet qualified) takes
        # its key back.
        if known is not None and (known.__module__, known.__name__) != (cls.__module__, cls.__name__):
            raise ValueError(f"report section key {cls.key!r} is taken by {known.__module__}.{known.__qualname__}")
        SECTIONS[cls.key] = cls

    @abstractmethod
    def markdown(self, report: Report) -> list[str]:
        """report.md lines, after the layers (or the structure) and before the training cost."""

    def plots(self, report: Report) -> dict[str, Callable[[Report, Path], Path]]:
        """PNG file name → the function that writes it for `report`."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportSection:
        return cls(**data)


def read_sections(data: dict[str, Any]) -> dict[str, ReportSection]:
    """The sections in `data` (report.json's top level, or a method's facts): every registered key that holds a
    value, rebuilt by its class."""
    return {key: kind.from_dict(data[key]) for key, kind in SECTIONS.items() if data.get(key)}
