"""Every verb's outputs through the command: concurrent runs, full disks, and any name the OS accepts.

`compress --out`, `train -o`, `deploy -o` and `bench --json/--plot` share one output protocol
(`compressor.files.Output`); these tests run the real command, in real processes where the case needs two of
them or a limited file size.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from compressor.api import compress
from compressor.cli import main
from shared import small_disk, under_file_size_limit

COMMAND = [sys.executable, "-m", "compressor.cli"]
ODD = os.fsdecode(b"caf\xc3\xa9 \xff bytes")  # unicode, a space and a byte that is no UTF-8


@pytest.fixture(scope="module")
def inputs(lenet5_checkpoint, tmp_path_factory):
    """A folder with the dense checkpoint and a compressed output to bench and deploy."""
    root = tmp_path_factory.mktemp("inputs")
    shutil.copy(lenet5_checkpoint, root / "dense.pt")
    compress(root / "dense.pt", "magnitude", "50%", epochs=0, out=root / "out", progress=False)
    return root


# What each verb writes, and the command that writes it to DEST; {dense} and {onnx} are the inputs above.
VERBS = {
    "compress": (["{dense}", "--target", "50%", "--epochs", "1", "--out", "DEST", "--no-progress"],
                 ["model.onnx", "model.pt", "report.json", "report.md", "sparsity.png"]),
    "train": (["train", "lenet5", "--epochs", "1", "-o", "DEST", "--no-progress"], None),
    "deploy": (["deploy", "{onnx}", "--target", "jetson-orin", "-o", "DEST"],
               ["README.md", "bench.sh", "build_engine.sh", "manifest.json", "model.onnx", "model_fp16.onnx",
                "sample.npz", "verify.py"]),
    "bench": (["bench", "{out}", "--backend", "ort-cpu", "--json", "DEST"], None),
}


def verb_command(verb, inputs, destination):
    arguments, _ = VERBS[verb]
    paths = {"dense": inputs / "dense.pt", "onnx": inputs / "out" / "model.onnx", "out": inputs / "out"}
    return COMMAND + [str(destination) if a == "DEST" else a.format(**paths) for a in arguments]


def assert_one_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("compress: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("verb", list(VERBS))
def test_two_runs_on_one_output_give_one_complete_result(verb, inputs, tmp_path):
    destination = tmp_path / "same"
    runs = [subprocess.Popen(verb_command(verb, inputs, destination), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = assert_one_line(next(err for code, err in results if code == 2))
    # The loser either found the winner at work or, started late, its finished output.
    assert "is being written by another run (pid" in loser or "already exists" in loser
    expected = VERBS[verb][1]
    if expected is None:
        assert destination.is_file() and destination.stat().st_size > 0
    else:
        assert sorted(p.name for p in destination.iterdir()) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_write_that_fails_is_one_line_and_leaves_nothing(verb, inputs, tmp_path):
    # A 1 KB file size limit: every verb's first real output is larger, and the kernel fails that write
    # (EFBIG) the way a full disk does (ENOSPC).
    result = under_file_size_limit(verb_command(verb, inputs, tmp_path / "result"), 1024, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert assert_one_line(result.stderr).endswith("File too large")
    assert list(tmp_path.iterdir()) == []


def test_too_little_space_is_refused_before_any_work(inputs, capsys):
    with small_disk(4) as disk:
        code = main([str(inputs / "dense.pt"), "--target", "50%", "--out", str(disk / "o"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "not enough free space for output folder" in assert_one_line(err)
        assert "measure dense" not in err and list(disk.iterdir()) == []


def test_any_name_the_os_accepts_works_with_every_verb(inputs, tmp_path):
    checkpoint = tmp_path / f"{ODD}.pt"
    shutil.copy(inputs / "dense.pt", checkpoint)
    out = tmp_path / f"out {ODD}"
    steps = [
        [str(checkpoint), "--target", "50%", "--epochs", "0", "--out", str(out), "--no-progress"],
        ["bench", str(out), "--backend", "ort-cpu", "--json", str(tmp_path / f"{ODD}.json"),
         "--plot", str(tmp_path / f"{ODD}.png")],
        ["deploy", str(out / "model.onnx"), "--target", "jetson-orin", "-o", str(tmp_path / f"bundle {ODD}")],
        ["train", "lenet300_100", "--epochs", "0", "-o", str(tmp_path / f"{'é' * 100}{ODD}.pt"), "--no-progress"],
    ]
    for step in steps:
        result = subprocess.run(COMMAND + step, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "caf\u00e9 \\xff bytes" in result.stdout
    assert "caf\u00e9 \\xff bytes" in (out / "report.md").read_text(encoding="utf-8")
    written = sorted(os.fsencode(p.name) for p in tmp_path.iterdir())
    assert len(written) == 6 and not any(name.startswith(b".") for name in written)


def test_the_longest_name_the_os_accepts_works(inputs, tmp_path, capsys):
    out = tmp_path / ("o" * 255)
    assert main([str(inputs / "dense.pt"), "--target", "50%", "--epochs", "0", "--out", str(out),
                 "--no-progress"]) == 0
    assert (out / "model.onnx").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("argv, message", [
    (["{dense}", "--target", "50%", "--out", "{long}"], r"the name o+\.\.\.o+ is 256 bytes and this file system allows 255"),
    (["train", "lenet5", "-o", "{long}"], "is 256 bytes and this file system allows 255"),
    (["deploy", "{onnx}", "--target", "jetson-orin", "-o", "{deep}"], "paths here are limited to 4096 bytes"),
    (["bench", "{out}", "--json", "{long}"], "is 256 bytes"),
    (["train", "lenet5", "-o", "/proc/compressor-test/t.pt"], r"cannot create /proc/compressor-test \(No such"),
    (["bench", "{out}", "--json", "/proc/compressor-test/b.json"], r"cannot create /proc/compressor-test \(No such"),
    (["{dense}", "--target", "50%", "--out", ".", "--force"], r"--force would replace \., which holds the current folder"),
    (["train", "lenet5", "-o", "{out}", "--force"], "exists and is a folder; it cannot be replaced by a file"),
    (["{dense}", "--target", "50%", "--out", "{inputs}", "--force"], "holds the input .*dense.pt"),
], ids=["long-out", "long-train", "deep-deploy", "long-json", "proc-train", "proc-json", "dot", "folder-as-file",
        "input-inside"])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(argv, message, inputs, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {"dense": inputs / "dense.pt", "onnx": inputs / "out" / "model.onnx", "out": inputs / "out",
             "inputs": inputs, "long": "o" * 256, "deep": "/".join(["d" * 200] * 21)}
    code = main([a.format(**paths) for a in argv])
    assert code == 2 and re.search(message, assert_one_line(capsys.readouterr().err))
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in inputs.iterdir()) == ["dense.pt", "out"]


def test_a_terminated_run_keeps_its_state_for_resume(inputs, tmp_path):
    # SIGTERM is how job schedulers stop a run (and how torchrun stops the others when one process fails).
    run = subprocess.Popen(COMMAND + [str(inputs / "dense.pt"), "--target", "50%", "--epochs", "200", "--out", "out",
                                      "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / ".out.partial" / "train-state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143
    assert err.splitlines()[-1] == "compress: terminated; run the same command with --resume to continue"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial"]
    assert sorted(p.name for p in (tmp_path / ".out.partial").iterdir()) == ["train-state.pt"]
