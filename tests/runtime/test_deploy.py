"""Tests for deploy bundles: their files and manifest, verify.py, and the trtexec commands the scripts print.

No machine here has TensorRT, so the scripts are exercised through `--dry-run` (with `--trt-version` standing
in for the version trtexec reports on the device) and verify.py through its onnxruntime backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import compressor
from compressor.api import export_onnx
from compressor.errors import CompressorError
from compressor.passes.analysis import two_four_mask
from compressor.passes.convert_float16 import convert_float16, is_float16
from compressor.runtime.deploy import BENCH_SETTINGS, FIND_TRTEXEC, TARGETS, build_bundle
from compressor.runtime.ort_backend import OrtBackend

BASH = shutil.which("bash")
# Every build keeps per-layer kernels: the engine inspector and layer_info.json show which ones are sparse.
DETAILED = ["--profilingVerbosity=detailed", "--exportLayerInfo=layer_info.json"]
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _cnn(two_four: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()
    if two_four:
        # The first conv has 3 input channels: it stays dense, as TensorRT's 2:4 layout requires.
        with torch.no_grad():
            for layer in (model[3], model[7]):
                layer.weight.mul_(two_four_mask(layer.weight))
    return model


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """{"dense": path, "2:4": path}: the same tiny CNN exported dense and with its eligible layers made 2:4."""
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, two_four in (("dense", False), ("2:4", True)):
        path = folder / f"{'sparse' if two_four else 'dense'}.onnx"
        export_onnx(_cnn(two_four), path, input_shape=(3, 8, 8))
        files[name] = path
    return files


@pytest.fixture(scope="module")
def orin_bundle(onnx_files, tmp_path_factory):
    """The fp16 jetson-orin bundle of the 2:4 model, built once; tests that change it work on a copy."""
    return build_bundle(onnx_files["2:4"], "jetson-orin", tmp_path_factory.mktemp("bundles") / "orin")


@pytest.fixture
def bundle_copy(orin_bundle, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(orin_bundle.path, path)
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify(bundle_path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle_path / "verify.py"), *args], capture_output=True, text=True,
                          cwd=cwd or bundle_path.parent, timeout=120)


def _edit_manifest(bundle_path, change) -> None:
    """Let change edit the bundle's manifest in place, then write it back."""
    path = bundle_path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _script(bundle_path, name, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("DLA_CORE", "TRTEXEC")}
    environment.update(env or {})
    return subprocess.run([BASH, str(bundle_path / name), *args], capture_output=True, text=True,
                          cwd=cwd or bundle_path.parent, env=environment, timeout=60)


def _dry_run(bundle_path, trt_version="10.3", env=None) -> list[str]:
    result = _script(bundle_path, "build_engine.sh", "--dry-run", "--trt-version", trt_version, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _model(inputs, nodes, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "model", inputs, outputs, initializer=list(initializers))
    # IR 10 because onnxruntime rejects the newest IR versions that recent onnx releases stamp by default.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _relu_model(shape, elem_type=TensorProto.FLOAT) -> onnx.ModelProto:
    return _model([helper.make_tensor_value_info("x", elem_type, shape)], [helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("y", elem_type, shape)])


def _save(model: onnx.ModelProto, path):
    path.write_bytes(model.SerializeToString())
    return path


# --- contents and manifest ---------------------------------------------------------------------------------------


def test_bundle_contents(orin_bundle, onnx_files):
    path, manifest = orin_bundle.path, orin_bundle.manifest

    assert sorted(p.name for p in path.iterdir()) == sorted([
        "README.md", "bench.sh", "build_engine.sh", "manifest.json", "model.onnx", "model_fp16.onnx", "sample.npz",
        "verify.py"])
    assert (path / "model.onnx").read_bytes() == onnx_files["2:4"].read_bytes()
    fp16 = onnx.load(path / "model_fp16.onnx")
    assert is_float16(fp16)
    assert [i.type.tensor_type.elem_type for i in (*fp16.graph.input, *fp16.graph.output)] == [TensorProto.FLOAT] * 2
    for name in ("build_engine.sh", "bench.sh", "verify.py"):
        assert os.access(path / name, os.X_OK), name

    with np.load(path / "sample.npz") as sample:
        x, expected = sample["input"], sample["expected"]
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(expected, OrtBackend(path / "model.onnx", threads=1).run(x))

    assert manifest == json.loads((path / "manifest.json").read_text())
    assert manifest["tool"]["version"] == compressor.__version__
    assert manifest["precision"] == "fp16"
    assert manifest["tolerance"]["relative"] == 0.02
    assert manifest["tolerance"]["absolute"] == pytest.approx(0.02 * np.abs(expected).max())
    assert manifest["input"] == {"name": "input", "shape_onnx": ["batch", 3, 8, 8], "shape": [1, 3, 8, 8],
                                 "dtype": "float32"}
    assert manifest["output"]["name"] == "logits" and manifest["output"]["shape"] == [1, 10]
    assert manifest["batch"] == {"onnx": "batch", "built": 1}
    assert manifest["target"] == {**TARGETS["jetson-orin"].facts()}
    assert manifest["target"]["sparse_tensor_cores"] is True and manifest["target"]["tensorrt"] == "10.3"


def test_manifest_names_the_two_four_and_the_dense_layers(orin_bundle):
    sparsity = orin_bundle.manifest["sparsity"]
    model = onnx.load(orin_bundle.path / "model.onnx")
    readers = {node.input[1]: node.name for node in model.graph.node if node.op_type in ("Conv", "Gemm")}

    assert sparsity["sparse_build"] is True
    assert [layer["weight"] for layer in sparsity["two_four"]] == list(readers)[1:]
    assert [layer["weight"] for layer in sparsity["dense"]] == list(readers)[:1]
    for layer in sparsity["two_four"] + sparsity["dense"]:
        assert layer["node"] == readers[layer["weight"]]
    assert "ineligible" in sparsity["dense"][0]["reason"]


def test_manifest_hashes_match_the_files(orin_bundle):
    files = orin_bundle.manifest["files"]

    assert sorted(files) == sorted(p.name for p in orin_bundle.path.iterdir() if p.name != "manifest.json")
    for name, fact in files.items():
        assert fact == {"sha256": _sha256(orin_bundle.path / name), "size": (orin_bundle.path / name).stat().st_size}


def test_readme_gives_the_device_steps(orin_bundle):
    readme = (orin_bundle.path / "README.md").read_text()

    for step in ("sudo nvpmodel -m 0", "sudo jetson_clocks", "./build_engine.sh", "python3 verify.py", "./bench.sh",
                 "--sparsity=enable", "TensorRT 10.3", "JetPack 6.1"):
        assert step in readme, step


def test_same_input_gives_a_byte_identical_bundle(onnx_files, orin_bundle, tmp_path):
    again = build_bundle(onnx_files["2:4"], "jetson-orin", tmp_path / "again")

    names = sorted(p.name for p in orin_bundle.path.iterdir())
    assert names == sorted(p.name for p in again.path.iterdir())
    for name in names:
        assert (again.path / name).read_bytes() == (orin_bundle.path / name).read_bytes(), name


def test_seed_changes_the_sample(onnx_files, orin_bundle, tmp_path):
    other = build_bundle(onnx_files["2:4"], "jetson-orin", tmp_path / "seed1", seed=1)

    assert other.manifest["files"]["sample.npz"] != orin_bundle.manifest["files"]["sample.npz"]


def test_force_replaces_an_existing_bundle(onnx_files, tmp_path):
    out = tmp_path / "bundle"
    build_bundle(onnx_files["dense"], "jetson-orin", out)
    (out / "stale.txt").write_text("old")

    build_bundle(onnx_files["dense"], "x86-gpu", out, force=True)

    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["target"]["name"] == "x86-gpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --- verify.py ---------------------------------------------------------------------------------------------------


def test_verify_manifest_only_passes(orin_bundle, tmp_path):
    result = _verify(orin_bundle.path, "--manifest-only", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "PASS manifest: 7 files match their size and sha256"


def test_verify_fails_on_a_changed_file_and_a_missing_one(bundle_copy):
    with (bundle_copy / "model_fp16.onnx").open("ab") as stream:
        stream.write(b"\0")
    (bundle_copy / "bench.sh").unlink()
    (bundle_copy / "notes.txt").write_text("mine")

    result = _verify(bundle_copy, "--manifest-only")

    assert result.returncode == 1
    assert "note: files not listed in the manifest: notes.txt" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        "FAIL manifest: missing bench.sh; sha256 or size differs for model_fp16.onnx")


def test_verify_ignores_the_files_the_device_writes(bundle_copy):
    for name in ("model.engine", "build.log", "engine_info.txt", "bench.log"):
        (bundle_copy / name).write_text("written on the device")

    result = _verify(bundle_copy, "--manifest-only")

    assert result.returncode == 0
    assert "note" not in result.stdout


def test_verify_onnxruntime_passes(orin_bundle, tmp_path):
    result = _verify(orin_bundle.path, "--backend", "onnxruntime", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("PASS onnxruntime-cpu on model_fp16.onnx, fp16: max |diff| ")
    assert "<= tolerance" in last and "0.02 x max |expected|" in last


def test_verify_fails_on_a_tampered_sample(bundle_copy):
    sample = bundle_copy / "sample.npz"
    with np.load(sample) as stored:
        x, expected = stored["input"], stored["expected"]
    np.savez(sample, input=x, expected=expected + np.abs(expected).max())

    changed = _verify(bundle_copy, "--backend", "onnxruntime")
    assert changed.returncode == 1
    assert changed.stdout.strip().splitlines()[-1] == "FAIL manifest: sha256 or size differs for sample.npz"

    # With the manifest updated too, the output check itself must catch the wrong expected output.
    _edit_manifest(bundle_copy, lambda manifest: manifest["files"].update(
        {"sample.npz": {"sha256": _sha256(sample), "size": sample.stat().st_size}}))
    wrong = _verify(bundle_copy, "--backend", "onnxruntime")
    assert wrong.returncode == 1
    last = wrong.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL onnxruntime-cpu on model_fp16.onnx, fp16: max |diff| ")
    assert "> tolerance" in last


def test_verify_tensorrt_without_an_engine_is_a_usage_error(orin_bundle):
    result = _verify(orin_bundle.path)

    assert result.returncode == 2
    assert "model.engine not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_verify_without_manifest_is_a_usage_error(bundle_copy):
    (bundle_copy / "manifest.json").unlink()

    result = _verify(bundle_copy, "--manifest-only")

    assert result.returncode == 2
    assert "manifest.json not found" in result.stderr


def test_verify_rejects_unknown_options(orin_bundle):
    assert _verify(orin_bundle.path, "--backend", "openvino").returncode == 2


MODES = {"manifest": ["--manifest-only"], "onnxruntime": ["--backend", "onnxruntime"]}


def _refused(result, problems: str) -> None:
    """verify.py failed the bundle on one line: FAIL, the manifest's problems, and nothing else."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [f"FAIL manifest.json: {problems}"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("key", ["files", "tolerance", "precision", "input", "output"])
def test_verify_refuses_a_manifest_missing_a_required_key(bundle_copy, key, mode):
    _edit_manifest(bundle_copy, lambda manifest: manifest.pop(key))

    _refused(_verify(bundle_copy, *MODES[mode]), f"missing {key}")


@pytest.mark.parametrize("mode", list(MODES))
def test_verify_refuses_a_manifest_listing_no_files(bundle_copy, mode):
    _edit_manifest(bundle_copy, lambda manifest: manifest.update(files={}))

    _refused(_verify(bundle_copy, *MODES[mode]), "files lists no files")


def test_verify_names_every_problem_of_the_manifest_on_one_line(bundle_copy):
    def strip(manifest):
        del manifest["tolerance"], manifest["output"]["name"]
        manifest.update(files={}, precision="int8")

    _edit_manifest(bundle_copy, strip)

    _refused(_verify(bundle_copy, "--manifest-only"),
             "missing tolerance, output.name; files lists no files; precision is not one of fp16, fp32")


MALFORMED = {
    "files a list": (lambda m: m.update(files=sorted(m["files"])), "files is not an object"),
    "entry a string": (lambda m: m["files"].update({"bench.sh": "ok"}), "files entry bench.sh is not an object"),
    "size a string": (lambda m: m["files"]["bench.sh"].update(size="12"), "size of bench.sh is not a whole number"),
    "size negative": (lambda m: m["files"]["bench.sh"].update(size=-1), "size of bench.sh is not a whole number"),
    "no sha256": (lambda m: m["files"]["bench.sh"].pop("sha256"), "missing sha256 of bench.sh"),
    "sha256 short": (lambda m: m["files"]["bench.sh"].update(sha256="abc"), "sha256 of bench.sh is not 64 hex digits"),
    "sample unlisted": (lambda m: m["files"].pop("sample.npz"), "files does not list sample.npz"),
    "tolerance a string": (lambda m: m.update(tolerance="0.02"), "tolerance is not an object"),
    "no relative": (lambda m: m["tolerance"].pop("relative"), "missing tolerance.relative"),
    "relative zero": (lambda m: m["tolerance"].update(relative=0), "tolerance.relative is not a number > 0"),
    "relative a string": (lambda m: m["tolerance"].update(relative="0.02"), "tolerance.relative is not a number > 0"),
    "precision unknown": (lambda m: m.update(precision="int8"), "precision is not one of fp16, fp32"),
    "precision a list": (lambda m: m.update(precision=["fp16"]), "precision is not one of fp16, fp32"),
    "input a string": (lambda m: m.update(input="input"), "input is not an object"),
    "output name a number": (lambda m: m["output"].update(name=0), "output.name is not a string"),
    "device outputs a string": (lambda m: m.update(device_outputs="model.engine"),
                                "device_outputs is not a list of file names"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_verify_refuses_a_malformed_manifest_without_a_traceback(bundle_copy, case):
    change, problem = MALFORMED[case]
    _edit_manifest(bundle_copy, change)

    _refused(_verify(bundle_copy, "--backend", "onnxruntime"), problem)


@pytest.mark.parametrize("text, problem", [
    ("[]", "not a JSON object"),
    ('"files"', "not a JSON object"),
    ('{"files": ', "not valid JSON ("),
    ("[" * 100_000, "not valid JSON ("),
])
def test_verify_refuses_a_manifest_that_is_no_json_object(bundle_copy, text, problem):
    (bundle_copy / "manifest.json").write_text(text)

    result = _verify(bundle_copy, "--manifest-only")

    # The JSON decoder's own words follow "not valid JSON" and differ between Python versions.
    assert result.returncode == 1 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith(f"FAIL manifest.json: {problem}")


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_verify_refuses_files_outside_the_bundle(bundle_copy, where):
    # A real file with the listed size and sha256: only its place outside the bundle may fail it.
    outside = bundle_copy.parent / "outside.txt"
    outside.write_text("not part of the bundle")
    name = "../outside.txt" if where == "relative" else str(outside)
    _edit_manifest(bundle_copy, lambda manifest: manifest["files"].update(
        {name: {"sha256": _sha256(outside), "size": outside.stat().st_size}}))

    _refused(_verify(bundle_copy, "--manifest-only"), f"files may only name files in the bundle folder, not {name}")


def test_verify_shows_file_names_with_line_breaks_on_one_line(bundle_copy):
    (bundle_copy / "new\nline.txt").write_text("mine")
    _edit_manifest(bundle_copy, lambda manifest: manifest["files"].update(
        {"gone\nfile": {"sha256": "0" * 64, "size": 0}}))

    result = _verify(bundle_copy, "--manifest-only")

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["note: files not listed in the manifest: 'new\\nline.txt'",
                                          "FAIL manifest: missing 'gone\\nfile'"]


@pytest.mark.parametrize("mode", list(MODES))
def test_verify_passes_a_rewritten_intact_manifest(bundle_copy, mode):
    def rewrite(manifest):
        for fact in manifest["files"].values():
            fact["sha256"] = fact["sha256"].upper()

    _edit_manifest(bundle_copy, rewrite)

    result = _verify(bundle_copy, *MODES[mode])

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("PASS ")


# --- build_engine.sh and bench.sh --------------------------------------------------------------------------------


@needs_bash
def test_build_dry_run_enables_sparsity_for_two_four_on_orin(orin_bundle, tmp_path):
    command = _dry_run(orin_bundle.path)

    assert command == ["trtexec", "--onnx=model_fp16.onnx", "--saveEngine=model.engine", *DETAILED,
                       "--shapes=input:1x3x8x8", "--sparsity=enable", "--stronglyTyped"]
    assert command[1:] == orin_bundle.manifest["trtexec"]["build_expected"]


@needs_bash
def test_build_dry_run_of_a_dense_model_has_no_sparsity(onnx_files, tmp_path):
    bundle = build_bundle(onnx_files["dense"], "jetson-orin", tmp_path / "dense")

    assert bundle.manifest["sparsity"]["two_four"] == []
    assert "--sparsity=enable" not in _dry_run(bundle.path)
    assert "No layer of this model is 2:4 sparse" in (bundle.path / "README.md").read_text()


@needs_bash
def test_xavier_runs_two_four_layers_dense(onnx_files, tmp_path):
    bundle = build_bundle(onnx_files["2:4"], "jetson-xavier", tmp_path / "xavier")

    command = _dry_run(bundle.path, "8.5")
    assert "--sparsity=enable" not in command
    assert command[1:] == ["--onnx=model.onnx", "--saveEngine=model.engine", *DETAILED, "--shapes=input:1x3x8x8",
                           "--fp16"]
    assert bundle.manifest["sparsity"]["sparse_build"] is False
    assert len(bundle.manifest["sparsity"]["two_four"]) == 2
    script = (bundle.path / "build_engine.sh").read_text()
    readme = (bundle.path / "README.md").read_text()
    for text in (script, readme):
        assert "no sparse tensor cores" in text
        assert "run as dense" in " ".join(text.replace("# ", "").split())


@needs_bash
@pytest.mark.parametrize("trt_version, onnx_file, flags", [
    ("8.5", "model.onnx", ["--fp16"]),
    ("8.6", "model.onnx", ["--fp16"]),
    ("10.3", "model_fp16.onnx", ["--stronglyTyped"]),
    ("11.0", "model_fp16.onnx", []),
])
def test_precision_flags_follow_the_tensorrt_version(orin_bundle, trt_version, onnx_file, flags):
    command = _dry_run(orin_bundle.path, trt_version)

    assert command[1] == f"--onnx={onnx_file}"
    assert [a for a in command if a in ("--fp16", "--stronglyTyped", "--noTF32")] == flags


@needs_bash
def test_fp32_bundle(onnx_files, tmp_path):
    bundle = build_bundle(onnx_files["2:4"], "jetson-orin", tmp_path / "fp32", precision="fp32")

    assert not (bundle.path / "model_fp16.onnx").exists()
    assert "model_fp16.onnx" not in bundle.manifest["files"]
    assert bundle.manifest["tolerance"]["relative"] == 1e-4
    for trt_version in ("8.5", "10.3", "11.0"):
        command = _dry_run(bundle.path, trt_version)
        assert command[1] == "--onnx=model.onnx"
        assert "--noTF32" in command and "--fp16" not in command and "--stronglyTyped" not in command
        # Sparse tensor cores do not compute in IEEE FP32: the 2:4 layers of an fp32 engine run dense.
        assert "--sparsity=enable" not in command
    sparsity = bundle.manifest["sparsity"]
    assert sparsity["sparse_build"] is False and len(sparsity["two_four"]) == 2
    assert all("--sparsity=enable" not in args for flags in bundle.manifest["trtexec"]["build"].values()
               for args in flags.values())
    script = (bundle.path / "build_engine.sh").read_text()
    for text in (sparsity["note"], (bundle.path / "README.md").read_text(), script.replace("# ", "")):
        flat = " ".join(text.split())
        assert "run dense in FP32" in flat and "an fp16 bundle uses them" in flat
    result = _verify(bundle.path, "--backend", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS onnxruntime-cpu on model.onnx, fp32: max |diff| 0 <= " in result.stdout


@needs_bash
def test_dla_flags(onnx_files, orin_bundle, tmp_path):
    bundle = build_bundle(onnx_files["2:4"], "jetson-orin", tmp_path / "dla", dla_core=1)

    # TensorRT 10 builds DLA engines from the FP32 model with --fp16, the documented DLA recipe.
    assert _dry_run(bundle.path, "10.3")[1:] == [
        "--onnx=model.onnx", "--saveEngine=model.engine", *DETAILED, "--shapes=input:1x3x8x8", "--sparsity=enable",
        "--fp16", "--useDLACore=1", "--allowGPUFallback"]
    assert bundle.manifest["trtexec"]["build_expected"][-2:] == ["--useDLACore=1", "--allowGPUFallback"]
    assert _dry_run(bundle.path, "11.0")[-3:] == ["--sparsity=enable", "--useDLACore=1", "--allowGPUFallback"]
    # The device overrides the bundle's default: an empty DLA_CORE builds for the GPU, a number picks a core.
    assert "--useDLACore=1" not in _dry_run(bundle.path, env={"DLA_CORE": ""})
    assert _dry_run(orin_bundle.path, env={"DLA_CORE": "0"})[-2:] == ["--useDLACore=0", "--allowGPUFallback"]

    missing = _script(bundle.path, "build_engine.sh", "--dry-run", "--trt-version", "10.3", env={"DLA_CORE": "2"})
    assert missing.returncode == 2
    assert missing.stderr.strip() == "build_engine.sh: jetson-orin has DLA cores 0..1, not 2"


@needs_bash
def test_numbers_with_leading_zeros_are_read_in_base_10(orin_bundle):
    assert _dry_run(orin_bundle.path, env={"DLA_CORE": "01"})[-2:] == ["--useDLACore=1", "--allowGPUFallback"]
    too_high = _script(orin_bundle.path, "build_engine.sh", "--dry-run", "--trt-version", "10.3",
                       env={"DLA_CORE": "08"})
    assert too_high.returncode == 2
    assert too_high.stderr.strip() == "build_engine.sh: jetson-orin has DLA cores 0..1, not 8"

    assert "--stronglyTyped" in _dry_run(orin_bundle.path, "10.08")
    assert "--fp16" in _dry_run(orin_bundle.path, "08.09")
    old = _script(orin_bundle.path, "build_engine.sh", "--dry-run", "--trt-version", "08.04")
    assert old.returncode == 2
    assert old.stderr.strip() == ("build_engine.sh: TensorRT 8.4 is older than 8.5 (JetPack 5.1), the oldest this "
                                  "bundle supports")


@needs_bash
def test_dla_requests_the_device_cannot_honour_fail(onnx_files, tmp_path):
    x86 = build_bundle(onnx_files["dense"], "x86-gpu", tmp_path / "x86")
    fp32 = build_bundle(onnx_files["dense"], "jetson-orin", tmp_path / "fp32", precision="fp32")

    for bundle, message in ((x86, "x86-gpu has no DLA"), (fp32, "DLA runs FP16 or INT8 only")):
        result = _script(bundle.path, "build_engine.sh", "--dry-run", "--trt-version", "10.3", env={"DLA_CORE": "0"})
        assert result.returncode == 2
        assert message in result.stderr


@needs_bash
def test_bench_dry_run_flags(orin_bundle, bundle_copy):
    result = _script(orin_bundle.path, "bench.sh", "--dry-run")

    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert command == ["trtexec", "--loadEngine=model.engine", "--shapes=input:1x3x8x8", "--useCudaGraph",
                       "--noDataTransfers", "--useSpinWait", "--warmUp=500", "--duration=10", "--iterations=200",
                       "--avgRuns=100"]
    assert command[1:] == orin_bundle.manifest["trtexec"]["bench"]
    assert BENCH_SETTINGS == {"warmUp": 500, "duration": 10, "iterations": 200, "avgRuns": 100}

    changed = _script(orin_bundle.path, "bench.sh", "--dry-run", env={"ITERATIONS": "50", "DURATION_S": "3"})
    assert "--iterations=50" in changed.stdout.split() and "--duration=3" in changed.stdout.split()

    # An engine built for a DLA core runs on that core.
    (bundle_copy / "engine_info.txt").write_text("tensorrt=10.3\ndla_core=1\n")
    assert _script(bundle_copy, "bench.sh", "--dry-run").stdout.split()[-1] == "--useDLACore=1"


def test_both_scripts_find_trtexec_the_same_way(orin_bundle):
    for name in ("build_engine.sh", "bench.sh"):
        script = (orin_bundle.path / name).read_text()
        assert script.count("find_trtexec() {") == 1 and FIND_TRTEXEC in script, name
        assert re.search(r"@[A-Z_]+@", script) is None, name  # every placeholder filled in


@needs_bash
def test_bench_without_trtexec_says_so(bundle_copy, tmp_path):
    (bundle_copy / "model.engine").write_bytes(b"plan")

    result = _script(bundle_copy, "bench.sh", env={"PATH": os.path.dirname(BASH)}, cwd=tmp_path)

    if shutil.which("trtexec", path=os.path.dirname(BASH)) is None and not os.path.exists(
            "/usr/src/tensorrt/bin/trtexec"):
        assert result.returncode == 2
        assert result.stderr.strip() == "bench.sh: trtexec not found: set TRTEXEC=/path/to/trtexec"


@needs_bash
def test_scripts_need_an_engine_or_trtexec(orin_bundle, tmp_path):
    build = _script(orin_bundle.path, "build_engine.sh", "--dry-run", cwd=tmp_path,
                    env={"PATH": os.path.dirname(BASH)})
    bench = _script(orin_bundle.path, "bench.sh", cwd=tmp_path)
    unknown = _script(orin_bundle.path, "build_engine.sh", "--fast", cwd=tmp_path)

    jetpack_trtexec = "/usr/src/tensorrt/bin/trtexec"
    if shutil.which("trtexec", path=os.path.dirname(BASH)) is None and not os.path.exists(jetpack_trtexec):
        assert build.returncode == 2
        assert "trtexec not found" in build.stderr
    assert bench.returncode == 2 and "model.engine not found" in bench.stderr
    assert unknown.returncode == 2 and "unknown option --fast" in unknown.stderr


@needs_bash
def test_static_batch_model_gets_no_shapes(tmp_path):
    onnx_path = _save(_relu_model([2, 3, 4, 4]), tmp_path / "static.onnx")
    bundle = build_bundle(onnx_path, "x86-gpu", tmp_path / "bundle", batch=2)

    assert bundle.manifest["batch"] == {"onnx": 2, "built": 2}
    assert not any(a.startswith("--shapes") for a in _dry_run(bundle.path))
    bench = _script(bundle.path, "bench.sh", "--dry-run").stdout.split()
    assert bench[:3] == ["trtexec", "--loadEngine=model.engine", "--useCudaGraph"]


@needs_bash
def test_batch_is_built_into_the_shapes(onnx_files, tmp_path):
    bundle = build_bundle(onnx_files["dense"], "x86-gpu", tmp_path / "b4", batch=4)

    assert "--shapes=input:4x3x8x8" in _dry_run(bundle.path)
    assert bundle.manifest["input"]["shape"] == [4, 3, 8, 8]
    with np.load(bundle.path / "sample.npz") as sample:
        assert sample["input"].shape == (4, 3, 8, 8) and sample["expected"].shape == (4, 10)


# --- bad input ---------------------------------------------------------------------------------------------------


def _two_input_model():
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")]
    return _model(values, [helper.make_node("Add", ["a", "b"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """y = x @ w, with the 4x4 weight `w` given."""
    return _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                  [numpy_helper.from_array(weight, "w")])


def _fp16_overflow_model():
    """A MatMul whose weights lie beyond FP16's largest finite value (65504), which the conversion clamps."""
    return _matmul_model(np.full((4, 4), 1e5, np.float32))


def _fp16_model():
    return convert_float16(_matmul_model(np.eye(4, dtype=np.float32)))


def _nan_weight_model():
    weight = np.eye(4, dtype=np.float32)
    weight[2, 1] = np.nan
    return _matmul_model(weight)


BAD_MODELS = {
    "missing": (None, "ONNX model not found"),
    "garbage": (b"not an onnx model", "cannot read ONNX model"),
    "two inputs": (_two_input_model, r"exactly one input, got 2 \(a, b\)"),
    "int input": (lambda: _relu_model(["N", 4], TensorProto.INT64), r"'x' has type INT64; only float inputs"),
    "dynamic sizes": (lambda: _relu_model(["N", 3, "H", "W"]),
                      r"shape \(N, 3, H, W\): only the batch dimension may be dynamic"),
    "fixed batch": (lambda: _relu_model([2, 3, 4, 4]), "fixes the batch at 2; build with batch=2"),
    "fp16 overflow": (_fp16_overflow_model, "FP16 model disagrees with the FP32 model"),
    "fp16 weights": (_fp16_model, "holds FP16 weights: give the FP32 model; the bundle makes its own FP16 variant"),
    "NaN weight": (_nan_weight_model, r"model\.onnx: initializer w contains NaN$"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_leave_nothing_behind(case, tmp_path):
    source, message = BAD_MODELS[case]
    onnx_path = tmp_path / "model.onnx"
    if isinstance(source, bytes):
        onnx_path.write_bytes(source)
    elif source is not None:
        _save(source(), onnx_path)

    with pytest.raises(CompressorError, match=message) as caught:
        build_bundle(onnx_path, "jetson-orin", tmp_path / "bundle")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if source is None else ["model.onnx"])


def test_truncated_onnx_is_refused(onnx_files, tmp_path):
    onnx_path = tmp_path / "truncated.onnx"
    onnx_path.write_bytes(onnx_files["dense"].read_bytes()[:200])

    with pytest.raises(CompressorError, match="cannot read ONNX model") as caught:
        build_bundle(onnx_path, "jetson-orin", tmp_path / "bundle")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("options, message", [
    ({"target": "jetson-nano"}, "unknown target 'jetson-nano'; choose one of jetson-orin, jetson-xavier, x86-gpu"),
    ({"target": "x86-gpu", "dla_core": 0}, "target x86-gpu has no DLA"),
    ({"dla_core": 2}, r"target jetson-orin has DLA cores 0\.\.1, not 2"),
    ({"dla_core": -1}, r"target jetson-orin has DLA cores 0\.\.1, not -1"),
    ({"precision": "fp32", "dla_core": 0}, "a DLA bundle must be fp16"),
    ({"precision": "int8"}, "unknown precision 'int8'"),
    ({"precision": "tf32"}, "deploy bundles are fp16 or fp32, not tf32"),
    ({"batch": 0}, "batch must be a positive integer, got 0"),
])
def test_bad_options_are_refused(onnx_files, tmp_path, options, message):
    options = {"target": "jetson-orin", **options}

    with pytest.raises(CompressorError, match=message) as caught:
        build_bundle(onnx_files["dense"], out=tmp_path / "bundle", **options)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(onnx_files, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    with pytest.raises(CompressorError, match="already exists; pass --force"):
        build_bundle(onnx_files["dense"], "jetson-orin", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_unwritable_output_is_refused(onnx_files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(CompressorError, match="cannot write bundle folder") as caught:
        build_bundle(onnx_files["dense"], "jetson-orin", blocker / "bundle")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
