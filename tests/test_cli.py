"""The `compress` command: verbs work, and every bad input is one line on stderr, exit code 2, nothing written.

Whole runs that check that flags reach a method, and a run of the installed console script, are in
tests/e2e/test_cli_runs.py.
"""

import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from compressor.cli import main
from compressor.errors import quoted
from compressor.models import create_model, list_models
from compressor.runtime.trt_backend import tensorrt_unavailable
from shared import set_values_


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err


def test_zoo_lists_every_architecture(capsys):
    code, out, _ = run(["zoo"], capsys)
    assert code == 0
    for name in list_models():
        assert name in out
    assert "269,722" in out and "431,080" in out


def test_help_explains_options_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--method", "--target", "--pattern", "--data", "--epochs", "--out", "--force", "--arch",
                   "--trust-model", "--input-shape", "--seed", "--resume"):
        assert option in out
    assert "e.g." in out and "compress train" in out


def test_train_then_compress_then_bench(tmp_path, capsys):
    checkpoint = tmp_path / "lenet300.pt"
    code, out, _ = run(["train", "lenet300_100", "--epochs", "1", "-o", checkpoint, "--no-progress"], capsys)
    assert code == 0 and checkpoint.exists() and "test accuracy" in out
    code, _, err = run(["train", "lenet300_100", "--epochs", "1", "-o", checkpoint], capsys)
    assert_one_line_error(code, err)

    out_dir = tmp_path / "out"
    code, out, _ = run([checkpoint, "--method", "magnitude", "--target", "90%", "--epochs", "0", "--out", out_dir,
                        "--no-progress"], capsys)
    assert code == 0 and "90.00%" in out and "latency" in out and (out_dir / "model.onnx").exists()

    code, out, _ = run(["bench", out_dir / "model.onnx", "--batch", "1,4", "--threads", "1"], capsys)
    assert code == 0 and "median" in out and out.count("ort-cpu") >= 2
    assert "not run here" in out and "torch: " in out and "model.pt" in out

    chart, document = tmp_path / "bench.png", tmp_path / "bench.json"
    code, out, err = run(["bench", out_dir, "--baseline", checkpoint, "--backend", "ort-cpu,torch", "--batch", "1,4",
                          "--threads", "1", "--json", document, "--plot", chart], capsys)
    assert code == 0, err
    saved = json.loads(document.read_text())
    assert {(r["model"], r["backend"], r["batch"]) for r in saved["results"]} == {
        (m, b, n) for m in ("dense", "compressed") for b in ("ort-cpu", "torch") for n in (1, 4)}
    assert len(saved["speedups"]) == 4 and saved["unavailable"] == {}
    assert chart.read_bytes().startswith(b"\x89PNG")
    code, _, err = run(["bench", out_dir, "--json", document], capsys)
    assert_one_line_error(code, err)
    assert "--force" in err


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = create_model("lenet5")
    torch.save(model.state_dict(), root / "sd.pt")
    (root / "corrupt.pt").write_bytes(b"\x80\x04 definitely not a model")
    (root / "plain.txt").write_text("x")
    with open(root / "evil.pt", "wb") as f:
        pickle.dump(Evil(root / "pwned"), f)
    x = np.zeros((4, 3, 32, 32), np.float32)
    np.savez(root / "wrong.npz", x_train=x, y_train=np.zeros(4, np.int64), x_test=x, y_test=np.zeros(4, np.int64))
    (root / "existing").mkdir()
    (root / "corrupt.onnx").write_bytes(b"not a protobuf at all")
    # torch takes zeros for its legacy tar format, and advises loading that with weights_only=False.
    (root / "zeros.pt").write_bytes(bytes(2**20))
    from compressor.api import export_onnx
    from compressor.loading import save_checkpoint

    export_onnx(model.eval(), root / "lenet5.onnx")
    poisoned = set_values_(create_model("lenet5"), "features.conv2.weight", [math.nan])
    save_checkpoint(poisoned, root / "nan.pt")
    export_onnx(poisoned.eval(), root / "nan.onnx")
    return root


@pytest.mark.parametrize("args", [
    ["missing.pt", "--target", "50%"],
    ["corrupt.pt", "--target", "50%"],
    ["evil.pt", "--target", "50%"],
    ["sd.pt", "--target", "50%"],
    ["sd.pt", "--arch", "resnet20", "--target", "50%"],
    ["sd.pt", "--arch", "nonet", "--target", "50%"],
    ["sd.pt", "--arch", "lenet5", "--method", "nomethod", "--target", "50%"],
    ["sd.pt", "--arch", "lenet5", "--pattern", "1:8", "--target", "50%"],
    ["sd.pt", "--arch", "lenet5", "--data", "mnist", "--target", "50%"],
    ["sd.pt", "--arch", "lenet5", "--target", "0%"],
    ["sd.pt", "--arch", "lenet5", "--target", "100%"],
    ["sd.pt", "--arch", "lenet5", "--target", "1.5"],
    ["sd.pt", "--arch", "lenet5", "--target", "lots"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--data", "npz:wrong.npz"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--out", "existing"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--out", "plain.txt/out"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--option", "scope"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--input-shape", "3,32"],
    ["sd.pt", "--arch", "lenet5", "--bogus-flag"],
    ["bench", "missing.onnx"],
    ["bench", "corrupt.pt"],
    ["bench", "corrupt.pt", "--batch", "0,x"],
    ["bench", "corrupt.pt", "--runs", "10"],
    ["bench", "corrupt.pt", "--warmup", "-1"],
    ["bench", "corrupt.onnx"],
    ["bench", "sd.pt"],
    ["bench", "lenet5.onnx", "--backend", "warp-drive"],
    pytest.param(["bench", "lenet5.onnx", "--backend", "trt"],
                 marks=pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT can run here")),
    ["bench", "lenet5.onnx", "--backend", "torch"],
    ["bench", "lenet5.onnx", "--precision", "int3"],
    ["bench", "lenet5.onnx", "--threads", "0"],
    ["bench", "lenet5.onnx", "--json", "plain.txt"],
    ["bench", "lenet5.onnx", "--plot", "plain.txt/chart.png"],
    ["bench", "lenet5.onnx", "--json", "same.out", "--plot", "same.out"],
    ["bench", "lenet5.onnx", "--baseline", "missing.pt"],
    ["bench", "lenet5.onnx", "--baseline", "sd.pt", "--arch", "resnet20"],
    ["deploy", "missing.onnx", "--target", "jetson-orin", "-o", "bundle"],
    ["deploy", "corrupt.onnx", "--target", "jetson-orin", "-o", "bundle"],
    ["deploy", "lenet5.onnx", "--target", "jetson-nano", "-o", "bundle"],
    ["deploy", "lenet5.onnx", "--target", "jetson-orin"],
    ["deploy", "lenet5.onnx", "--target", "x86-gpu", "--dla-core", "0", "-o", "bundle"],
    ["deploy", "lenet5.onnx", "--target", "jetson-orin", "--dla-core", "2", "-o", "bundle"],
    ["deploy", "lenet5.onnx", "--target", "jetson-orin", "--batch", "0", "-o", "bundle"],
    ["deploy", "lenet5.onnx", "--target", "jetson-orin", "-o", "existing"],
    ["deploy", "lenet5.onnx", "--target", "jetson-orin", "-o", "plain.txt/bundle"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--bench-batch", "0"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--epochs", "-1"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--threads", "0"],
    ["train", "nonet", "-o", "x.pt"],
    ["train", "lenet5", "-o", "x.pt", "--wd-mode", "decoupled"],
    ["train", "lenet5", "-o", "x.pt", "--loss", "mse"],
    ["train", "lenet5", "-o", "x.pt", "--weight-decay", "-1"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--optimizer", "sgd", "--wd-mode", "decoupled"],
    ["sd.pt", "--arch", "lenet5", "--method", "snapshot", "--option", "sweep=1"],
    ["sd.pt", "--arch", "lenet5", "--method", "snapshot", "--option", "theta_hidden=1.2"],
    ["sd.pt", "--arch", "lenet5", "--method", "snapshot", "--pattern", "2:4", "--target", "80%"],
    ["sd.pt", "--arch", "lenet5", "--method", "switcher", "--pattern", "2:4"],
    ["sd.pt", "--arch", "lenet5", "--method", "switcher", "--option", "mode=synapse"],
    ["sd.pt", "--arch", "lenet5", "--method", "switcher", "--option", "encoder_channels=0"],
    ["sd.pt", "--arch", "lenet5", "--method", "switcher", "--pattern", "structured"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--flops-target", "70%"],
    ["sd.pt", "--arch", "lenet5", "--method", "budget", "--target", "50%", "--flops-target", "170%"],
    ["sd.pt", "--arch", "lenet5", "--method", "budget", "--target", "50%", "--budget-loss", "cubic"],
    ["sd.pt", "--arch", "lenet5", "--method", "budget", "--budget-loss", "squared"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target", "50%", "--round-to", "7"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target", "50%", "--channel-scope", "local"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target", "99.9%"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--round-to", "8"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "0"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "100%"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "1x"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "50%", "--latency-backend", "abacus"],
    ["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "50%", "--round-to", "1"],
    pytest.param(["sd.pt", "--arch", "lenet5", "--method", "channel", "--target-latency", "2x", "--latency-backend",
                  "torch-cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ["sd.pt", "--arch", "lenet5", "--target-latency", "50%"],
    ["sd.pt", "--arch", "lenet5", "--target", "50%", "--channel-scope", "layer"],
])
def test_bad_input_is_one_line_and_writes_nothing(bad_inputs, args, capsys, monkeypatch):
    monkeypatch.chdir(bad_inputs)
    before = sorted(p.name for p in bad_inputs.iterdir())
    code, _, err = run([*args, "--no-progress"] if args[0] not in ("bench", "deploy") else args, capsys)
    assert_one_line_error(code, err)
    assert sorted(p.name for p in bad_inputs.iterdir()) == before
    assert list((bad_inputs / "existing").iterdir()) == []
    assert not (bad_inputs / "pwned").exists()


LONG_NAME = "a" * 300


@pytest.mark.parametrize("args, message", [
    ([f"{LONG_NAME}.pt", "--target", "50%"], f"compress: error: cannot read model {quoted(LONG_NAME + '.pt')}: File name too long"),
    (["sd.pt", "--arch", "lenet5", "--target", "50%", "--data", f"imagefolder:{LONG_NAME}"],
     "cannot read data folder"),
    (["bench", "lenet5.onnx", "--baseline", f"{LONG_NAME}.pt"], "cannot read model"),
    (["bench", f"{LONG_NAME}.onnx"], "cannot read model"),
    (["deploy", f"{LONG_NAME}.onnx", "--target", "jetson-orin", "-o", "bundle"], "cannot read ONNX model"),
    (["zeros.pt", "--target", "50%"], "compress: error: zeros.pt is not a readable PyTorch file"),
    (["bench", "zeros.pt"], "zeros.pt is not a readable PyTorch file"),
    (["nan.pt", "--target", "50%"],
     "compress: error: nan.pt: weights of layer features.conv2 contain NaN (features.conv2.weight)"),
    (["bench", "lenet5.onnx", "--baseline", "nan.pt"], "nan.pt: weights of layer features.conv2 contain NaN"),
    (["bench", "nan.onnx"], "ONNX model nan.onnx: initializer features.conv2.weight contains NaN"),
    (["deploy", "nan.onnx", "--target", "jetson-orin", "-o", "bundle"], "initializer features.conv2.weight"),
])
def test_refused_models_and_data_are_one_line_in_our_words(bad_inputs, args, message, capsys, monkeypatch):
    monkeypatch.chdir(bad_inputs)
    code, _, err = run([*args, "--no-progress"] if args[0] not in ("bench", "deploy") else args, capsys)
    assert_one_line_error(code, err)
    assert message in err and "weights_only" not in err
    assert not (bad_inputs / "bundle").exists() and not (bad_inputs / "compressed").exists()


@pytest.mark.parametrize("args, message", [
    (["evil.pt", "--target", "50%"], "--trust-model"),
    (["corrupt.pt", "--target", "50%"], "not a readable PyTorch file"),
    (["zeros.pt", "--target", "50%"], "not a readable PyTorch file"),
    (["sd.pt", "--arch", "lenet5", "--target", "50%", "--data", "npz:wrong.npz"], "samples are 3x32x32"),
])
def test_console_script_prints_exactly_one_line(bad_inputs, args, message):
    result = subprocess.run([sys.executable, "-m", "compressor.cli", *args], capture_output=True, text=True,
                            cwd=bad_inputs, timeout=300)
    assert result.returncode == 2
    assert_one_line_error(result.returncode, result.stderr)
    assert message in result.stderr and "weights_only" not in result.stderr
    assert not (bad_inputs / "pwned").exists() and not (bad_inputs / "compressed").exists()


def test_deploy_writes_a_bundle_that_verifies(bad_inputs, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    code, out, err = run(["deploy", bad_inputs / "lenet5.onnx", "--target", "jetson-orin", "-o", bundle], capsys)
    assert code == 0, err
    assert "build_engine.sh" in out and "2:4 layers: 0 of 4" in out
    check = subprocess.run([sys.executable, bundle / "verify.py", "--backend", "onnxruntime"], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.startswith("manifest:") and "PASS" in check.stdout


def test_a_model_that_cannot_be_saved_is_refused_up_front(tmp_path, capsys, monkeypatch):
    from shared import ReopensLogNet

    torch.save(ReopensLogNet(), tmp_path / "logging.pt")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["logging.pt", "--target", "50%", "--trust-model", "--input-shape", "1,8,8", "--out", "o",
                        "--no-progress"], capsys)
    assert_one_line_error(code, err)
    assert "cannot be saved" in err
    assert [p.name for p in tmp_path.iterdir()] == ["logging.pt"]
