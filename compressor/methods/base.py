"""The one interface every compression method implements, and the registry that names them.

A method decides *what* to remove and says so only through weight masks and gates (docs/ARCHITECTURE.md);
passes decide how the model becomes smaller. Its life cycle is `prepare` (attach masks/gates, possibly from data)
→ training with the method's hooks (`fit`) (a `TrainingHooks` subclass: extra losses, optimizer groups, per-step
work) → `finalize` (fix the decisions) → `outcome` (what it decided, typed, for the report, the ONNX metadata
and the checkpoint). Each method has a hyper-parameter dataclass whose defaults are its seed paper's, so the CLI
and the Python API construct every method the same way and never special-case one. What a run hands a method
besides its options travels in a `RunContext`; what a method adds to the report beyond the shared tables is a
`ReportSection` of its own, carried by its outcome, so a new method touches only its own files and the registry.
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn as nn

from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods.latency_goal import LatencyGoal
from compressor.report import ReportSection
from compressor.training import TrainConfig, TrainingHooks, TrainResult, train

PATTERNS = ("unstructured", "2:4")


@dataclass(frozen=True)
class RunContext:
    """The settings of one compression run that a method may plan for besides its own options: the batch size and
    CPU threads the run measures latency at (`compress --bench-batch/--threads`), which a method steering by
    measured latency times its plans at."""

    bench_batch: int = 1
    threads: int | None = None


@dataclass
class StructureOutcome:
    """What a structured method decided beyond the gates the compiler folds, for the report's structure section.

    A field left None is one the method does not record (and the ONNX metadata then has no such key).
    `predicted` holds the method's own prediction (`macs_removed`, ...); `left_whole` the channel groups it could
    not cut, with the reason; `removed_units` the skip-units it removed while it trained; `training_cost` per
    epoch the MACs trained and alive; `stages` per network stage its units and channel widths; `probabilities`
    the survivors' final keep probabilities (`theta` for units, `pi` for channels); `pruning_stages` what each of
    its pruning rounds decided; `notes` what a person should know about the run.
    """

    predicted: dict[str, float] | None = None
    left_whole: list[dict[str, Any]] | None = None
    removed_units: list[str] | None = None
    training_cost: list[dict[str, Any]] | None = None
    stages: dict[str, dict[str, Any]] | None = None
    probabilities: dict[str, list[float]] | None = None
    pruning_stages: list[dict[str, Any]] | None = None
    notes: list[str] | None = None


@dataclass
class MethodOutcome:
    """What a method's run decided and recorded: its settings, the structure it decided (structured methods), facts
    of its own that the ONNX metadata records (`details`, JSON values), and its report sections."""

    method: str
    target: float | None
    pattern: str
    config: dict[str, Any]
    structure: StructureOutcome | None = None
    details: dict[str, Any] = field(default_factory=dict)
    sections: list[ReportSection] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """Method, target, pattern and options: what identifies the run before it has learned anything."""
        return {"method": self.method, "target": self.target, "pattern": self.pattern, "config": self.config}

    def metadata(self) -> dict[str, Any]:
        """The facts the ONNX file (`compressor.*` keys) and the checkpoint record: the settings, every structure
        field the method records, and its details."""
        recorded = dict(self.settings())
        if self.structure is not None:
            recorded.update({key: value for key, value in dataclasses.asdict(self.structure).items()
                             if value is not None})
        recorded.update(self.details)
        return recorded


class Method(TrainingHooks, metaclass=ABCMeta):
    """Base class: a compression method with its own `Config` dataclass."""

    name: ClassVar[str]
    Config: ClassVar[type]
    patterns: ClassVar[tuple[str, ...]] = PATTERNS
    # Training defaults when the caller gives none: a method that only fine-tunes needs a small learning rate
    # and few epochs; one that learns its decisions while training needs the rate its paper trained with.
    default_epochs: ClassVar[int] = 5
    default_lr: ClassVar[float] = 0.01
    # Structured methods gate channels and units; `compress` then compiles the gated model to a thinner one,
    # keeping channel counts at multiples of `round_to`.
    structured: ClassVar[bool] = False
    round_to: int = 1
    # A method that steers by measured latency leaves its goal here; the run measures it against the final model.
    latency_goal: LatencyGoal | None = None
    # Replaces the latency table's timer (a callable LayerSpec → ms), e.g. with a synthetic table in tests.
    latency_measure: Any = None

    def __init__(self, target: float | None, pattern: str = "unstructured", config: Any = None,
                 run: RunContext | None = None):
        if self.structured and pattern == "unstructured":
            pattern = "structured"  # the command line's default pattern, given to a method that only removes structure
        if pattern not in self.patterns:
            raise CompressorError(f"method {self.name} supports patterns {', '.join(self.patterns)}, not {pattern!r}")
        self.target = target
        self.pattern = pattern
        self.config = config if config is not None else self.Config()
        self.run = run if run is not None else RunContext()
        # Prunable layers the method leaves dense, with the reason; filled by `prepare`.
        self.skipped: dict[str, str] = {}

    @abstractmethod
    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        """Attach the method's masks/gates to `model` (in place) and return it."""

    def fit(self, model: nn.Module, data: DataBundle, config: TrainConfig, **loop: Any) -> TrainResult:
        """Train the prepared model in the shared loop with this method's hooks; `loop` are `train`'s keyword
        arguments (state path, resume, progress, description). A method that trains in stages sets the length
        of the run here."""
        return train(model, data.train, data.test, config, hooks=self, **loop)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Fix the method's decisions after training; the default keeps the masks as they are."""
        return model

    def predicted_sparsity(self) -> dict[str, float]:
        """Per-layer sparsity the method predicted before counting (empty when it predicts nothing)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """Method, target, pattern and options: what a resumed run must share, known before any model work."""
        return {"method": self.name, "target": self.target, "pattern": self.pattern,
                "config": dataclasses.asdict(self.config)}

    def fingerprint(self) -> dict[str, Any]:
        """A resumed fine-tune must continue the same method with the same target, pattern and options (and, by
        default, the same decisions so far)."""
        return self.outcome().metadata()

    def outcome(self) -> MethodOutcome:
        """What this method's run decided and records; a method adds its structure, details and sections."""
        return MethodOutcome(**self.settings())


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its `name`."""
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def create_method(name: str, target: float | None, pattern: str = "unstructured", run: RunContext | None = None,
                  **options: Any) -> Method:
    """Build a registered method for a run with settings `run`; `options` override fields of its Config dataclass."""
    if name not in _METHODS:
        raise CompressorError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    cls = _METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise CompressorError(f"method {name} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return cls(target, pattern, cls.Config(**options), run)


def method_config_class(name: str) -> type:
    """The Config dataclass of a registered method."""
    if name not in _METHODS:
        raise CompressorError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name].Config


def typed_options(name: str, options: dict[str, str]) -> dict[str, Any]:
    """Convert KEY=VALUE strings from the command line to the types of the method's Config fields."""
    if name not in _METHODS or not options:
        return dict(options)
    fields = {f.name: f for f in dataclasses.fields(_METHODS[name].Config)}
    typed: dict[str, Any] = {}
    for key, text in options.items():
        field = fields.get(key)
        if field is None:
            typed[key] = text
            continue
        if field.metadata.get("parse"):
            typed[key] = field.metadata["parse"](text)
            continue
        default = field.default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                typed[key] = text.lower() in ("true", "1", "yes")
            elif isinstance(default, (int, float)):
                typed[key] = type(default)(text)
            else:
                typed[key] = text
        except ValueError:
            raise CompressorError(f"option {key} of method {name} takes a {type(default).__name__}, not {text!r}") from None
    return typed
