"""`compress bench` behind the CLI: models from any source, every backend that runs here, JSON and chart."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.api import export_onnx
from compressor.errors import CompressorError
from compressor.latency import (ALONE, COMPRESSED, DENSE, Comparison, compare_backends, comparison_outputs, comparison_table,
                                load_subject, parse_backends, write_comparison)
from compressor.loading import save_checkpoint
from compressor.models import create_model
from compressor.runtime.backends import BACKENDS, Subject
from compressor.runtime.tolerance import Agreement

FAST = {"runs": 5, "warmup": 1, "threads": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense lenet300_100 checkpoint, and a 'compressed' output folder (model.onnx + model.pt) of it."""
    root = tmp_path_factory.mktemp("latency")
    torch.manual_seed(0)
    dense = create_model("lenet300_100").eval()
    save_checkpoint(dense, root / "dense.pt")
    compressed = create_model("lenet300_100").eval()
    with torch.no_grad():
        for parameter in compressed.parameters():
            parameter.mul_((torch.rand_like(parameter) > 0.5).float())
    folder = root / "out"
    folder.mkdir()
    save_checkpoint(compressed, folder / "model.pt")
    export_onnx(compressed, folder / "model.onnx")
    return root


def test_subjects_load_from_onnx_checkpoint_and_folder(models):
    onnx_only = load_subject(models / "out" / "model.onnx", "x")
    from_checkpoint = load_subject(models / "dense.pt", "y")
    from_folder = load_subject(models / "out", "z")

    assert onnx_only.module is None and onnx_only.input_shape == (1, 28, 28)
    assert from_checkpoint.module is not None and len(from_checkpoint.onnx.graph.node) > 0
    assert from_folder.module is not None and from_folder.input_shape == (1, 28, 28)


@pytest.mark.parametrize("spec, message", [
    ("missing.pt", "model not found"),
    ("empty", "has no model.onnx"),
    ("broken.onnx", "cannot read ONNX model"),
])
def test_bad_subjects_are_one_line_errors(models, spec, message):
    (models / "empty").mkdir(exist_ok=True)
    (models / "broken.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(CompressorError, match=message):
        load_subject(models / spec, "x")


def test_comparison_times_both_models_on_every_backend_that_runs(models):
    comparison = compare_backends(models / "out", models / "dense.pt", backends=None, batch_sizes=(1, 3), **FAST)

    measured = {(label, r.backend, r.batch) for label, r in comparison.results}
    assert {(m, b, n) for m in (DENSE, COMPRESSED) for b in ("ort-cpu", "torch") for n in (1, 3)} <= measured
    timed = {r.backend for _, r in comparison.results}
    assert timed.isdisjoint(comparison.unavailable) and timed | set(comparison.unavailable) == set(BACKENDS)
    speedups = comparison.speedups()
    assert len(speedups) == len(measured) // 2 and all(s["speedup"] > 0 for s in speedups)
    table = comparison_table(comparison)
    assert "speedup" in table and "not run here:" in table and "x " in table and " ok " in table
    assert set(comparison.agreement) == {(label, b) for label, b, _ in measured}
    assert comparison.disagreements() == []


def test_a_backend_computing_something_else_is_reported(models):
    honest = load_subject(models / "out", "x")
    other = create_model("lenet300_100").eval()  # fresh random weights: not the model the ONNX holds
    mismatched = Subject("x", honest.onnx, other, honest.input_shape)
    comparison = compare_backends(mismatched, backends=("ort-cpu", "torch"), **FAST)

    assert comparison.agreement[(ALONE, "ort-cpu")].ok and not comparison.agreement[(ALONE, "torch")].ok
    assert len(comparison.disagreements()) == 1 and "torch on the model: max |diff|" in comparison.disagreements()[0]
    assert "FAIL" in comparison_table(comparison)


def test_a_model_alone_has_no_speedups(models):
    comparison = compare_backends(models / "out" / "model.onnx", backends=("ort-cpu",), **FAST)
    assert [label for label, _ in comparison.results] == [ALONE]
    assert comparison.speedups() == [] and comparison.unavailable == {}


def test_named_backend_that_cannot_run_is_an_error(models):
    with pytest.raises(CompressorError, match="backend torch cannot run here: .*only an ONNX file"):
        compare_backends(models / "out" / "model.onnx", backends=("ort-cpu", "torch"), **FAST)


def test_baseline_must_take_the_same_input(models):
    save_checkpoint(create_model("resnet20").eval(), models / "other.pt")
    with pytest.raises(CompressorError, match="not the same network"):
        compare_backends(models / "out", models / "other.pt", backends=("ort-cpu",), **FAST)


def test_json_and_chart_are_written(models, tmp_path):
    comparison = compare_backends(models / "out", models / "dense.pt", backends=("ort-cpu",), **FAST)
    document, chart = tmp_path / "b.json", tmp_path / "b.png"
    write_comparison(comparison, document, chart)

    saved = json.loads(document.read_text())
    assert set(saved) == {"versions", "machine", "settings", "models", "results", "agreement", "speedups",
                          "unavailable", "details"}
    assert all(entry["ok"] for entry in saved["agreement"]) and len(saved["agreement"]) == 2
    assert saved["versions"]["torch"] == torch.__version__ and saved["settings"]["batch_sizes"] == [1]
    assert saved["models"] == {DENSE: str(models / "dense.pt"), COMPRESSED: str(models / "out")}
    assert {r["timer"] for r in saved["results"]} == {"perf_counter"}
    assert chart.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(CompressorError, match="already exists"):
        with comparison_outputs(document, None, force=False):
            pass
    with comparison_outputs(document, chart, force=True) as (json_output, chart_output):
        write_comparison(comparison, json_output.staging, chart_output.staging)
        assert [json_output.commit(), chart_output.commit()] == [document, chart]
    assert json.loads(document.read_text()) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.png"]


def test_one_file_for_json_and_chart_is_refused(tmp_path):
    with pytest.raises(CompressorError, match="same file"):
        with comparison_outputs(tmp_path / "out", tmp_path / "." / "out", force=True):
            pass


@pytest.mark.parametrize("kwargs, message", [
    ({"backends": ()}, "no backend"),
    ({"batch_sizes": ()}, "batch sizes"),
    ({"batch_sizes": (0,)}, "batch sizes"),
    ({"runs": 0}, "runs >= 1"),
    ({"warmup": -1}, "warmup >= 0"),
])
def test_impossible_settings_are_refused_before_loading(kwargs, message):
    with pytest.raises(CompressorError, match=message):
        compare_backends("never-read.onnx", **kwargs)


def test_an_overflowing_output_is_recorded_as_null_in_json(tmp_path):
    comparison = Comparison(results=[], unavailable={})
    comparison.agreement[(ALONE, "trt")] = Agreement("fp16", float("inf"), 0.1)
    write_comparison(comparison, tmp_path / "b.json")
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["agreement"] == [{"model": ALONE, "backend": "trt", "precision": "fp16", "max_abs_diff": None,
                                   "tolerance": 0.1, "ok": False}]


def test_backend_lists_parse():
    assert parse_backends(None) is None and parse_backends("all") is None
    assert parse_backends("torch, ort-cpu,torch") == ("torch", "ort-cpu")
    for text in (",", "ort-gpu"):
        with pytest.raises(CompressorError):
            parse_backends(text)
