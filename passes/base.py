"""The pass framework: what a compiler pass is, what it returns, and how passes compose.

A pass is a small object with a `name` and `run(model) -> PassResult`. The model is an `nn.Module` for
torch-level passes and an `onnx.ModelProto` for ONNX-level ones. A pass never mutates its input: it returns
a new model and says honestly whether anything changed, so running it twice changes nothing the second
time. A `Pipeline` runs passes in order and, when one fails, names it and the passes that ran before it.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn

from compressor.errors import CompressorError, first_line
# copy_model and unparametrize lived here before the ground floor (compressor.modules); the old import path
# keeps working.
from compressor.modules import copy_model, model_device, unparametrize  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass produced: the new model, whether it differs from the input, and facts for the report."""

    model: Any
    modified: bool
    notes: dict[str, Any] = field(default_factory=dict)


class PassError(CompressorError):
    """A pass failed inside a pipeline; the message names it and the passes that completed before it.

    It is a user-facing error (a model the compiler cannot handle, such as one torch cannot export), reported
    in one line; the original exception stays in `cause` and chained as `__cause__`.
    """

    def __init__(self, pass_name: str, completed: Sequence[str], cause: BaseException):
        self.pass_name = pass_name
        self.completed = list(completed)
        self.cause = cause
        before = ", ".join(self.completed) if self.completed else "none"
        # One line: the cause's first line says what went wrong; the whole cause stays in `cause`.
        super().__init__(f"pass {pass_name} failed (after: {before}): {first_line(cause)}")


class Pass(ABC):
    """One model transformation or analysis. Subclasses set `name` and implement `run`."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, model: Any) -> PassResult:
        """Transform (a copy of) `model`; never mutate the argument."""

    def __call__(self, model: Any) -> PassResult:
        result = self.run(model)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.name} returned {type(result).__name__}, expected PassResult")
        return result


FP32_TOLERANCE = 1e-5
_PROBE_SEED = 0


def check_same_function(before: nn.Module, after: nn.Module, input_shape: Sequence[int], what: str) -> float:
    """Max |after − before| in eval mode on a fixed random batch; ValueError beyond 1e-5 × max |before|.

    Passes that rebuild a model's structure run this on their result: a transformation the analysis got
    wrong fails here, naming `what`, instead of producing a model that computes something else.
    """
    # Drawn on the CPU, so the batch is the same on every device, and moved to where the model is.
    generator = torch.Generator(device="cpu").manual_seed(_PROBE_SEED)
    probe = torch.randn(2, *input_shape, generator=generator, device="cpu").to(model_device(before))
    with torch.no_grad():
        expected = before.eval()(probe)
        actual = after.eval()(probe)
    if expected.shape != actual.shape:
        raise ValueError(f"{what} changed the output shape from {tuple(expected.shape)} to {tuple(actual.shape)}")
    difference = float((actual - expected).abs().max())
    if difference > FP32_TOLERANCE * max(float(expected.abs().max()), 1e-12):
        raise ValueError(f"{what} changed the output by {difference:.3g} (max |output| {float(expected.abs().max()):.3g})")
    return difference


@dataclass
class PipelineStep:
    """One pass's outcome inside a pipeline run."""

    name: str
    modified: bool
    seconds: float
    notes: dict[str, Any]


@dataclass
class PipelineResult:
    """The final model of a pipeline and each pass's outcome in order."""

    model: Any
    steps: list[PipelineStep]

    def notes(self, pass_name: str) -> dict[str, Any]:
        """The notes of the (last) step called `pass_name`."""
        for step in reversed(self.steps):
            if step.name == pass_name:
                return step.notes
        raise KeyError(pass_name)


class Pipeline:
    """Runs passes in order, feeding each the previous one's model."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)

    def run(self, model: Any) -> PipelineResult:
        steps: list[PipelineStep] = []
        for compiler_pass in self.passes:
            start = time.perf_counter()
            try:
                result = compiler_pass(model)
            except PassError:
                raise
            except Exception as error:
                raise PassError(compiler_pass.name, [s.name for s in steps], error) from error
            elapsed = time.perf_counter() - start
            logger.info("pass %s: modified=%s (%.2fs)", compiler_pass.name, result.modified, elapsed)
            steps.append(PipelineStep(compiler_pass.name, result.modified, elapsed, result.notes))
            model = result.model
        return PipelineResult(model, steps)
