"""Parsing of user-facing option values that several parts of the tool share.

Fractions such as sparsity targets are written `85%` or `0.85` and must lie strictly between 0 and 1; a
method's command-line flag is declared on its Config dataclass field with `method_flag`, so the CLI can offer
every method's flags without knowing any method by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from compressor.errors import CompressorError


def parse_fraction(value: str | float, option: str = "--target") -> float:
    """'85%' or '0.85' (or 0.85) → 0.85; anything outside (0, 1) is an error naming `option`."""
    text = str(value).strip()
    try:
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise CompressorError(f"{option} must look like 85% or 0.85, not {value!r}") from None
    if not 0 < fraction < 1:
        raise CompressorError(f"{option} must lie strictly between 0% and 100%, got {value!r}")
    return fraction


def method_flag(flag: str, help: str, parse: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Field metadata that exposes a method option as a command-line flag (`parse` converts its text)."""
    return {"flag": flag, "help": help, "parse": parse}


def target_params_field() -> Any:
    """The `--target-params` option that structured methods share: a fraction of the parameters to remove."""
    return dataclasses.field(default=None, metadata=method_flag(
        "--target-params", "structured methods: also remove this fraction of the parameters, as 50%% or 0.5",
        lambda text: parse_fraction(text, "--target-params")))


def flag_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of a method's Config that carry a command-line flag."""
    return [f for f in dataclasses.fields(config_class) if "flag" in f.metadata]
