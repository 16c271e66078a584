"""Whole runs of the `compress` command: method flags reach the method and its report, and a model only
cloudpickle can write runs through the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli import main
from shared import assert_onnx_matches_torch


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """lenet5 trained for one epoch by the `train` verb: the model both flag tests compress."""
    path = tmp_path_factory.mktemp("train") / "lenet5.pt"
    assert main(["train", "lenet5", "--epochs", "1", "-o", str(path), "--no-progress"]) == 0
    return path


def test_budget_flags_reach_the_method(checkpoint, tmp_path, capsys):
    code, out, err = run([checkpoint, "--method", "budget", "--target", "80%", "--budget-loss", "hinge",
                          "--flops-target", "60%", "--option", "lambda_flops=5", "--epochs", "2", "--out",
                          tmp_path / "o", "--no-progress"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "o" / "report.json").read_text())["method_config"]
    assert (config["loss"], config["flops_target"], config["lambda_flops"]) == ("hinge", 0.6, 5.0)


def test_structured_flags_reach_the_method(checkpoint, tmp_path, capsys):
    code, out, err = run([checkpoint, "--method", "channel", "--target", "40%", "--channel-scope", "uniform",
                          "--target-params", "30%", "--round-to", "16", "--latency-checks", "2", "--epochs", "1",
                          "--out", tmp_path / "o", "--no-progress"], capsys)
    assert code == 0, err
    assert "channels.png" in out
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert saved["method_config"] == {"scope": "uniform", "target_params": 0.3, "round_to": 16, "target_latency": None,
                                      "latency_backend": None, "latency_cache": None, "latency_checks": 2}
    assert saved["structure"]["macs_removed"] >= 0.4 and saved["structure"]["params_removed"] >= 0.3


def test_a_model_only_cloudpickle_can_write_runs_through_the_command(tmp_path):
    from shared import write_cloudpickled_lambda_model

    from compressor.loading import load_model

    source = write_cloudpickled_lambda_model(tmp_path / "lambda.pt")
    command = Path(sys.executable).with_name("compress")
    result = subprocess.run([command, source, "--target", "50%", "--epochs", "1", "--trust-model", "--input-shape",
                             "1,8,8", "--out", tmp_path / "o", "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    model = load_model(tmp_path / "o" / "model.pt", trust=True)
    assert_onnx_matches_torch(model, tmp_path / "o" / "model.onnx")
