"""Tests of the pass framework: PassResult type checks, Pipeline order and errors, copy_model on masked models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

from compressor.errors import CompressorError
from compressor.methods.masks import attach_masks
from compressor.passes.base import Pass, PassError, PassResult, Pipeline, PipelineResult, check_same_function
from compressor.modules import copy_model

REPO_ROOT = Path(__file__).resolve().parents[2]


class AppendPass(Pass):
    """Appends its tag to a list model; records the order in which passes saw the model."""

    def __init__(self, tag: str, modified: bool = True):
        self.name = f"Append{tag}"
        self.tag = tag
        self.modified = modified

    def run(self, model):
        return PassResult(model + [self.tag], modified=self.modified, notes={"seen": list(model)})


class FailingPass(Pass):
    name = "Failing"

    def run(self, model):
        raise ArithmeticError("boom")


class WrongReturnPass(Pass):
    name = "WrongReturn"

    def run(self, model):
        return model


def test_pass_call_returns_pass_result():
    result = AppendPass("a")(["x"])
    assert isinstance(result, PassResult)
    assert result.model == ["x", "a"] and result.modified is True and result.notes == {"seen": ["x"]}


def test_pass_result_notes_default_to_a_fresh_dict():
    first, second = PassResult(None, False), PassResult(None, False)
    first.notes["k"] = 1
    assert second.notes == {}


def test_pass_returning_non_pass_result_raises_type_error():
    with pytest.raises(TypeError, match="WrongReturn.*list.*PassResult"):
        WrongReturnPass()(["x"])


def test_pipeline_runs_passes_in_order_and_feeds_each_the_previous_model():
    result = Pipeline([AppendPass("a"), AppendPass("b", modified=False), AppendPass("c")]).run([])
    assert isinstance(result, PipelineResult)
    assert result.model == ["a", "b", "c"]
    assert [step.name for step in result.steps] == ["Appenda", "Appendb", "Appendc"]
    assert [step.modified for step in result.steps] == [True, False, True]
    assert [step.notes["seen"] for step in result.steps] == [[], ["a"], ["a", "b"]]
    assert all(step.seconds >= 0 for step in result.steps)


def test_empty_pipeline_returns_its_input():
    model = ["x"]
    result = Pipeline([]).run(model)
    assert result.model is model and result.steps == []


def test_failing_pass_raises_pass_error_naming_it_and_the_completed_passes():
    pipeline = Pipeline([AppendPass("a"), AppendPass("b"), FailingPass(), AppendPass("never")])
    with pytest.raises(PassError) as info:
        pipeline.run([])
    error = info.value
    assert error.pass_name == "Failing"
    assert error.completed == ["Appenda", "Appendb"]
    assert isinstance(error.cause, ArithmeticError)
    assert error.__cause__ is error.cause
    message = str(error)
    assert "Failing" in message and "Appenda, Appendb" in message and "boom" in message


def test_first_pass_failing_says_none_completed():
    with pytest.raises(PassError, match=r"pass Failing failed \(after: none\)"):
        Pipeline([FailingPass()]).run([])


def test_wrong_return_type_inside_pipeline_is_a_pass_error_caused_by_type_error():
    with pytest.raises(PassError) as info:
        Pipeline([AppendPass("a"), WrongReturnPass()]).run([])
    assert info.value.pass_name == "WrongReturn"
    assert info.value.completed == ["Appenda"]
    assert isinstance(info.value.cause, TypeError)


def test_nested_pipeline_error_is_not_rewrapped():
    class InnerPipelinePass(Pass):
        name = "Inner"

        def run(self, model):
            return PassResult(Pipeline([AppendPass("x"), FailingPass()]).run(model).model, True)

    with pytest.raises(PassError) as info:
        Pipeline([AppendPass("a"), InnerPipelinePass()]).run([])
    # The innermost failure is reported as is: it names the pass that really failed.
    assert info.value.pass_name == "Failing"
    assert info.value.completed == ["Appendx"]


def test_pipeline_result_notes_returns_the_last_step_of_that_name():
    result = Pipeline([AppendPass("a"), AppendPass("b"), AppendPass("a")]).run([])
    assert result.notes("Appenda") == {"seen": ["a", "b"]}
    assert result.notes("Appendb") == {"seen": ["a"]}
    with pytest.raises(KeyError):
        result.notes("Missing")


def _masked_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    attach_masks(model, {"0": (torch.rand(8, 4, 3, 3) > 0.5).float(), "4": (torch.rand(5, 128) > 0.5).float()})
    return model.eval()


def test_copy_model_works_on_a_masked_model_after_a_forward_with_grad(snapshot, check_unchanged):
    model = _masked_cnn()
    x = torch.randn(2, 4, 6, 6)
    reference = model(x)  # with grad: the masked weight is now a non-leaf tensor, which plain deepcopy refuses
    assert model[0].weight.grad_fn is not None
    state = snapshot(model)

    copied = copy_model(model)

    check_unchanged(model, state)
    assert prune.is_pruned(model[0]) and prune.is_pruned(copied[0])
    assert model[0].weight.grad_fn is not None, "copy_model replaced the original's masked weight"
    assert torch.equal(copied(x), reference)
    # The copy is independent: changing it leaves the original alone.
    with torch.no_grad():
        copied[0].weight_orig.add_(1.0)
        copied[0].weight_mask.zero_()
    check_unchanged(model, state)
    assert torch.equal(model(x), reference)


def test_pass_modules_import_first():
    """Each pass module must import in a fresh interpreter on its own (as a user script or plugin would)."""
    script = """
import importlib, json, sys
modules = ["compressor.passes.base", "compressor.passes.analysis", "compressor.passes.bake_masks", "compressor.passes.fold_batchnorm",
           "compressor.passes.enforce_two_four", "compressor.passes.emit_onnx", "compressor.passes.clean_onnx", "compressor.passes.write_onnx_metadata",
           "compressor.passes.check_onnx_sparsity"]
ours = ("passes", "compressor", "models", "runtime")
failures = {}
for name in modules:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failures[name] = f"{type(error).__name__}: {error}"
print(json.dumps(failures))
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    failures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert failures == {}, "pass modules that fail to import first:\n" + "\n".join(
        f"{name}: {why}" for name, why in failures.items()
    )




def test_pass_error_is_one_user_facing_line():
    cause = RuntimeError("first line of the cause\nsecond line\nthird")
    error = PassError("EmitOnnx", ["FoldBatchNorm"], cause)
    assert isinstance(error, CompressorError)
    assert str(error) == "pass EmitOnnx failed (after: FoldBatchNorm): first line of the cause"
    assert error.cause is cause


def test_check_same_function_refuses_a_different_output():
    before = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    after = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert check_same_function(before, before, (3, 2, 2), "nothing") == 0.0
    with pytest.raises(ValueError, match="changed the output by"):
        check_same_function(before, after, (3, 2, 2), "a bad pass")
    with pytest.raises(ValueError, match="output shape"):
        check_same_function(before, nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), (3, 2, 2), "a bad pass")
