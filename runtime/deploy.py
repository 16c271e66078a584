"""Deploy bundles: one folder with everything needed to build, check and time a compressed model on the device.

`build_bundle` turns a verified FP32 ONNX model into a folder to copy onto a Jetson (or an x86 machine with an NVIDIA
GPU). The TensorRT engine itself is not in it: an engine only loads with the TensorRT version and the GPU it was
built with, so the bundle carries the ONNX models and a `build_engine.sh` that runs trtexec on the device with
the flags that TensorRT version needs. Beside them: `verify.py` (checks the files against the manifest, then the
engine's or onnxruntime's output against an expected output stored in `sample.npz`), `bench.sh` (trtexec timing
with CUDA graphs and no host copies), a README with the steps, and `manifest.json` with the hashes and facts.

`TARGETS` records what each deployment target has: the JetPack and TensorRT it is expected to run, its GPU
architecture, whether that GPU has the sparse tensor cores that make 2:4 layers faster (in FP16 bundles: those
cores do not compute in IEEE FP32, so an fp32 bundle runs its 2:4 layers dense), and its DLA cores. A
bundle is deterministic (the same inputs give byte-identical files), and like every output folder of the tool
it appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import textwrap
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import compressor
from compressor.errors import CompressorError, printable
from compressor.files import Output, atomic_write_bytes, atomic_write_text
from compressor.passes.check_onnx_sparsity import OnnxLayerSparsity, read_onnx_sparsity
from compressor.passes.convert_float16 import convert_float16, is_float16
from compressor.runtime.onnx_model import model_input, output_dims, read_onnx
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend
from compressor.runtime.tolerance import RELATIVE_TOLERANCE, check_precision, compare_outputs

BUNDLE_FORMAT = "compressor-deploy-bundle/1"
TEMPLATES = Path(__file__).with_name("bundle")
BUNDLE_PRECISIONS = ("fp16", "fp32")
MODEL = "model.onnx"
MODEL_FP16 = "model_fp16.onnx"
ENGINE = "model.engine"
# Written on the device next to the engine; verify.py does not count them as strangers in the bundle.
LAYER_INFO = "layer_info.json"
DEVICE_OUTPUTS = (ENGINE, LAYER_INFO, "build.log", "engine_info.txt", "bench.log")
# trtexec's flags depend on the TensorRT generation found on the device (see flags_for); build_engine.sh picks
# one of these sets from the version trtexec reports.
TRT_FAMILIES = {"TRT8": "TensorRT 8.5-8.x", "TRT10": "TensorRT 9.x-10.x", "TRT11": "TensorRT 11 and newer"}
BENCH_SETTINGS = {"warmUp": 500, "duration": 10, "iterations": 200, "avgRuns": 100}
# The environment variables of bench.sh that override them.
BENCH_ENVIRONMENT = {"warmUp": "WARMUP_MS", "duration": "DURATION_S", "iterations": "ITERATIONS", "avgRuns": "AVG_RUNS"}
# build_engine.sh and bench.sh look for trtexec the same way. It prints nothing when there is none: build_engine.sh
# still prints a --dry-run command then, and each script says in its own words what is missing.
FIND_TRTEXEC = """\
find_trtexec() {
    if [[ -n "${TRTEXEC:-}" ]]; then
        echo "$TRTEXEC"
    elif command -v trtexec >/dev/null 2>&1; then
        command -v trtexec
    elif [[ -x /usr/src/tensorrt/bin/trtexec ]]; then
        echo /usr/src/tensorrt/bin/trtexec
    fi
}"""


@dataclass(frozen=True)
class Target:
    """What a deployment target runs and has; `jetpack`/`tensorrt` are what the device is expected to have."""

    name: str
    device: str
    jetpack: str | None
    tensorrt: str | None
    gpu_architecture: str
    sparse_tensor_cores: bool
    dla_cores: int
    dla_note: str
    power_setup: tuple[str, ...]

    def facts(self) -> dict[str, Any]:
        facts = asdict(self)
        facts["power_setup"] = list(self.power_setup)
        return facts


TARGETS = {
    "jetson-orin": Target(
        name="jetson-orin",
        device="NVIDIA Jetson AGX Orin, Orin NX or Orin Nano",
        jetpack="6.1",
        tensorrt="10.3",
        gpu_architecture="Ampere (sm_87)",
        sparse_tensor_cores=True,
        dla_cores=2,
        dla_note="AGX Orin and Orin NX 16GB have 2 DLA cores, Orin NX 8GB has 1, Orin Nano has none",
        power_setup=("sudo nvpmodel -m 0", "sudo jetson_clocks"),
    ),
    "jetson-xavier": Target(
        name="jetson-xavier",
        device="NVIDIA Jetson AGX Xavier or Xavier NX",
        jetpack="5.1.2",
        tensorrt="8.5",
        gpu_architecture="Volta (sm_72)",
        sparse_tensor_cores=False,
        dla_cores=2,
        dla_note="AGX Xavier and Xavier NX have 2 DLA cores",
        power_setup=("sudo nvpmodel -m 0", "sudo jetson_clocks"),
    ),
    "x86-gpu": Target(
        name="x86-gpu",
        device="x86-64 machine with an NVIDIA GPU (Ampere or newer for 2:4 sparse kernels)",
        jetpack=None,
        tensorrt=None,
        gpu_architecture="any NVIDIA GPU TensorRT supports; sparse tensor cores from Ampere (sm_80) on",
        sparse_tensor_cores=True,
        dla_cores=0,
        dla_note="discrete GPUs have no DLA",
        power_setup=("sudo nvidia-smi -pm 1", "sudo nvidia-smi --lock-gpu-clocks=<MHz>,<MHz>"),
    ),
}


@dataclass(frozen=True)
class Bundle:
    """A finished bundle folder and the manifest written into it."""

    path: Path
    manifest: dict[str, Any]

    def summary(self) -> str:
        """What was written and what to do next, for the terminal."""
        sparsity = self.manifest["sparsity"]
        target = self.manifest["target"]["name"]
        files = ", ".join(sorted(self.manifest["files"]))
        return "\n".join([
            f"wrote {printable(self.path)}/ for {target} ({self.manifest['precision']}): {files}",
            f"2:4 layers: {len(sparsity['two_four'])} of {len(sparsity['two_four']) + len(sparsity['dense'])}; "
            f"{sparsity['note']}",
            f"on the device: ./build_engine.sh, then python3 verify.py, then ./bench.sh (see {printable(self.path)}/README.md)",
        ])


@dataclass(frozen=True)
class _Io:
    """The model's single input and first output, as declared and at the bundle's batch size."""

    input_name: str
    input_onnx: list[int | str]
    input_shape: tuple[int, ...]
    output_name: str
    output_onnx: list[int | str]
    dynamic_batch: bool


def check_target(name: str) -> Target:
    """The target called `name`, else a one-line error listing the targets."""
    if name not in TARGETS:
        raise CompressorError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def flags_for(family: str, precision: str, dla: bool, sparse: bool, shapes: str | None) -> list[str]:
    """trtexec's build arguments for one TensorRT generation, without the DLA core flags.

    TensorRT 8.x has no strongly typed networks, so an FP16 engine comes from the FP32 model with --fp16.
    TensorRT 9 and 10 build the FP16 model as a strongly typed network, so every layer runs in the type the
    ONNX gives it, as verified here; on DLA they keep --fp16 on the FP32 model, the documented DLA recipe for
    those versions. TensorRT 11 removed --fp16 and weak typing: it always builds the FP16 model as typed.
    FP32 engines get --noTF32 because TF32 (on by default on Ampere) would miss the FP32 tolerance.
    """
    onnx_file, precision_flags = MODEL, []
    if precision == "fp32":
        precision_flags = ["--noTF32"]
    elif family == "TRT8" or (family == "TRT10" and dla):
        precision_flags = ["--fp16"]
    else:
        onnx_file = MODEL_FP16
        if family == "TRT10":
            precision_flags = ["--stronglyTyped"]
    # Detailed profiling verbosity keeps each layer's kernel in the engine and in layer_info.json, where a
    # sparse kernel shows by name: the answer to which layers actually ran sparse.
    args = [f"--onnx={onnx_file}", f"--saveEngine={ENGINE}", "--profilingVerbosity=detailed",
            f"--exportLayerInfo={LAYER_INFO}"]
    if shapes:
        args.append(shapes)
    if sparse:
        args.append("--sparsity=enable")
    return args + precision_flags


def _trt_family(version: str) -> str:
    major = int(version.split(".")[0])
    return "TRT8" if major <= 8 else "TRT10" if major <= 10 else "TRT11"


def _load_onnx(path: str | os.PathLike) -> tuple[bytes, onnx.ModelProto]:
    """The file's bytes (copied into the bundle as they are) and the model they hold."""
    model = read_onnx(path)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise CompressorError(f"ONNX model {path} keeps weights in external files; save it as a single file")
    return Path(path).read_bytes(), model


def _describe_io(model: onnx.ModelProto, batch: int) -> _Io:
    spec = model_input(model)
    if spec.elem_type != onnx.TensorProto.FLOAT:
        raise CompressorError(f"ONNX input {spec.name!r} is not float32: the bundle's sample and the deployed model "
                              "take float32 input")
    if spec.fixed_batch is not None and spec.fixed_batch != batch:
        raise CompressorError(f"ONNX input {spec.name!r} fixes the batch at {spec.fixed_batch}; "
                              f"build with batch={spec.fixed_batch}")
    output_shape = list(output_dims(model))
    output_name = model.graph.output[0].name
    return _Io(spec.name, list(spec.dims), (batch, *spec.sample_shape), output_name, output_shape, spec.dynamic_batch)


def _check_request(target: Target, precision: str, batch: int, dla_core: int | None, seed: int) -> None:
    check_precision(precision)
    if precision not in BUNDLE_PRECISIONS:
        raise CompressorError(f"deploy bundles are {' or '.join(BUNDLE_PRECISIONS)}, not {precision}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CompressorError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CompressorError(f"seed must be an integer, got {seed!r}")
    if dla_core is None:
        return
    if target.dla_cores == 0:
        raise CompressorError(
            f"target {target.name} has no DLA ({target.dla_note}); leave the DLA core (--dla-core) unset")
    if isinstance(dla_core, bool) or not isinstance(dla_core, int) or not 0 <= dla_core < target.dla_cores:
        raise CompressorError(
            f"target {target.name} has DLA cores 0..{target.dla_cores - 1}, not {dla_core!r} ({target.dla_note})")
    if precision != "fp16":
        raise CompressorError("DLA runs FP16 or INT8 layers only; a DLA bundle must be fp16")


def _layer(row: OnnxLayerSparsity) -> dict[str, Any]:
    layer = {"weight": row.name, "node": row.node, "op_type": row.op_type,
             "shape": list(row.shape), "sparsity": round(row.sparsity, 6)}
    if not row.two_four:
        layer["reason"] = ("not 2:4 (some group of 4 input channels holds more than 2 non-zeros)"
                           if row.two_four_eligible else "ineligible (input channels not in groups of 4, or grouped)")
    return layer


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive that np.load reads, with a fixed timestamp so that the same arrays give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _bash_array(name: str, args: list[str]) -> str:
    return f"{name}=(" + " ".join(shlex.quote(a) for a in args) + ")"


def _sparsity_note(target: Target, precision: str, two_four: list[dict]) -> str:
    if not two_four:
        return "No layer of this model is 2:4 sparse: a dense build."
    layers = f"{len(two_four)} layer{'s are' if len(two_four) > 1 else ' is'} 2:4 sparse"
    if not target.sparse_tensor_cores:
        return (f"{layers}, but the {target.gpu_architecture} GPU of {target.name} has no sparse tensor cores: those "
                "layers run as dense layers and the build has no --sparsity flag.")
    if precision == "fp32":
        return (f"{layers}, but sparse tensor cores do not compute in IEEE FP32: in this fp32 bundle those layers "
                "run dense in FP32 and the build has no --sparsity flag; an fp16 bundle uses them.")
    return (f"{layers}: building with --sparsity=enable. TensorRT picks a sparse kernel for a layer only where "
            "it beats the dense one (large channel counts), so expect fewer sparse layers than eligible ones.")


def _build_script(target: Target, precision: str, dla_core: int | None, flag_sets: dict[str, list[str]],
                  note: str) -> str:
    config = [
        "# Written for this bundle by compressor; the logic below is the same in every bundle.",
        f"TARGET={shlex.quote(target.name)}",
        f"JETPACK={shlex.quote(target.jetpack or '')}",
        f"EXPECTED_TRT={shlex.quote(target.tensorrt or '')}",
        f"DLA_CORES={target.dla_cores}",
        f"DEFAULT_DLA_CORE={'' if dla_core is None else dla_core}",
        f"PRECISION={precision}",
        *(f"# {line}" for line in textwrap.wrap(note, 110)),
        f"SPARSITY_NOTE={shlex.quote(note)}",
        *(_bash_array(name, args) for name, args in flag_sets.items()),
    ]
    return _render("build_engine.sh.in", "\n".join(config))


def _bench_script(shapes: str | None) -> str:
    config = "\n".join([
        "# Written for this bundle by compressor: the input shape (for engines with a dynamic batch) and the",
        "# default timing settings.",
        _bash_array("SHAPES", [shapes] if shapes else []),
        *(f"DEFAULT_{name}={BENCH_SETTINGS[key]}" for key, name in BENCH_ENVIRONMENT.items()),
    ])
    return _render("bench.sh.in", config)


def _render(template: str, config: str) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    return text.replace("@CONFIG@", config).replace("@FIND_TRTEXEC@", FIND_TRTEXEC)


def build_bundle(onnx_path: str | os.PathLike, target: str, out: str | os.PathLike, precision: str = "fp16",
                 batch: int = 1, dla_core: int | None = None, force: bool = False, seed: int = 0) -> Bundle:
    """Write the deploy bundle of the FP32 ONNX model at `onnx_path` for `target` into the folder `out`.

    The model is the bundle's FP32 reference, so a model with FP16 weights is refused: an fp16 bundle makes its
    own FP16 variant. `precision` is what the engine computes in ("fp16" or "fp32"; 2:4 layers run sparse only
    in fp16); `batch` the batch size the engine is built for (the ONNX model's own when it fixes one);
    `dla_core` the DLA core to build for by default (fp16 on a Jetson only; the device can override it); `seed`
    makes the sample input. Bad input raises a one-line `CompressorError` before anything is written, and a
    failure later leaves no folder behind.
    """
    spec = check_target(target)
    _check_request(spec, precision, batch, dla_core, seed)
    model_bytes, model = _load_onnx(onnx_path)
    if is_float16(model):
        # The bundle's expected output and its fp32 engine come from this model: it must be the FP32 one.
        raise CompressorError(f"ONNX model {onnx_path} holds FP16 weights: give the FP32 model; the bundle makes its "
                              "own FP16 variant")
    io_ = _describe_io(model, batch)
    with Output(out, folder=True, what="bundle folder", force=force, inputs=[onnx_path]) as output:
        # The FP32 model, its FP16 variant and a sample; the scripts and the manifest take the margin.
        output.require_space(len(model_bytes) * 3 // 2)
        manifest = _write_bundle(output.staging, spec, precision, batch, dla_core, seed, model_bytes, model, io_)
        return Bundle(output.commit(), manifest)


def _write_bundle(folder: Path, target: Target, precision: str, batch: int, dla_core: int | None, seed: int,
                  model_bytes: bytes, model: onnx.ModelProto, io_: _Io) -> dict[str, Any]:
    x = np.random.default_rng(seed).standard_normal(io_.input_shape).astype(np.float32)
    # One thread: the stored expected output must come out bit for bit the same on every build.
    expected = OrtBackend(model_bytes, providers=[CPU_PROVIDER], threads=1).run(x)
    tolerance = {"precision": precision, "relative": RELATIVE_TOLERANCE[precision], "of": "max |expected|",
                 "absolute": RELATIVE_TOLERANCE[precision] * float(np.max(np.abs(expected)))}
    files: dict[str, bytes] = {MODEL: model_bytes}
    if precision == "fp16":
        # onnxruntime's CPU provider runs FP16 ops it has no FP16 kernel for in FP32, so this catches what the
        # conversion itself loses (weights rounded or clamped to FP16); verify.py checks the FP16 arithmetic on
        # the device.
        fp16_bytes = convert_float16(model).SerializeToString()
        agreement = compare_outputs(OrtBackend(fp16_bytes, providers=[CPU_PROVIDER], threads=1).run(x), expected,
                                    "fp16")
        if not agreement.ok:
            raise CompressorError(f"the FP16 model disagrees with the FP32 model on onnxruntime: "
                                  f"{agreement.describe()}; deploy it as fp32")
        tolerance["fp16_onnx_max_abs_diff"] = agreement.max_abs_diff
        files[MODEL_FP16] = fp16_bytes
    files["sample.npz"] = _npz_bytes({"input": x, "expected": expected})

    rows = read_onnx_sparsity(model)
    two_four = [_layer(row) for row in rows if row.two_four]
    dense = [_layer(row) for row in rows if not row.two_four]
    # Sparse tensor cores run FP16 (and INT8, TF32), never IEEE FP32, and an fp32 bundle builds with --noTF32.
    sparse = bool(two_four) and target.sparse_tensor_cores and precision == "fp16"
    note = _sparsity_note(target, precision, two_four)
    shapes = f"--shapes={io_.input_name}:{'x'.join(map(str, io_.input_shape))}" if io_.dynamic_batch else None

    flag_sets: dict[str, list[str]] = {}
    for family in TRT_FAMILIES:
        flag_sets[f"{family}_GPU"] = flags_for(family, precision, False, sparse, shapes)
        if target.dla_cores and precision == "fp16":
            flag_sets[f"{family}_DLA"] = flags_for(family, precision, True, sparse, shapes)
    dla_flags = [f"--useDLACore={'<core>' if dla_core is None else dla_core}", "--allowGPUFallback"]
    build_flags = {
        label: {kind.lower(): args + (dla_flags if kind == "DLA" else [])
                for kind in ("GPU", "DLA") if (args := flag_sets.get(f"{family}_{kind}")) is not None}
        for family, label in TRT_FAMILIES.items()
    }
    expected_build = None
    if target.tensorrt:
        expected_build = build_flags[TRT_FAMILIES[_trt_family(target.tensorrt)]]["gpu" if dla_core is None else "dla"]
    bench_flags = [f"--loadEngine={ENGINE}", *([shapes] if shapes else []), "--useCudaGraph", "--noDataTransfers",
                   "--useSpinWait", *(f"--{key}={value}" for key, value in BENCH_SETTINGS.items())]

    files["build_engine.sh"] = _build_script(target, precision, dla_core, flag_sets, note).encode()
    files["bench.sh"] = _bench_script(shapes).encode()
    files["verify.py"] = (TEMPLATES / "verify.py").read_bytes()
    facts = {
        "target": target, "precision": precision, "io": io_, "expected": expected, "note": note,
        "two_four": two_four, "dla_core": dla_core, "expected_build": expected_build, "tolerance": tolerance,
    }
    files["README.md"] = _readme(facts).encode()

    for name, data in files.items():
        path = atomic_write_bytes(folder / name, data)
        os.chmod(path, 0o755 if name.endswith((".sh", ".py")) else 0o644)

    manifest = {
        "format": BUNDLE_FORMAT,
        "tool": {"name": "compressor", "version": compressor.__version__},
        "target": target.facts(),
        "precision": precision,
        "tolerance": tolerance,
        "input": {"name": io_.input_name, "shape_onnx": io_.input_onnx, "shape": list(io_.input_shape),
                  "dtype": "float32"},
        "output": {"name": io_.output_name, "shape_onnx": io_.output_onnx, "shape": list(expected.shape),
                   "dtype": "float32"},
        "batch": {"onnx": io_.input_onnx[0], "built": batch},
        "sample": {"seed": seed, "input": "standard normal, float32",
                   "expected": "onnxruntime CPU on model.onnx (FP32)"},
        "sparsity": {"two_four": two_four, "dense": dense, "sparse_build": sparse, "note": note},
        "dla_core": dla_core,
        "trtexec": {"expected_tensorrt": target.tensorrt, "build_expected": expected_build,
                    "build": build_flags, "bench": bench_flags},
        "device_outputs": list(DEVICE_OUTPUTS),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in sorted(files.items())},
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _readme(facts: dict[str, Any]) -> str:
    target: Target = facts["target"]
    io_: _Io = facts["io"]
    precision = facts["precision"]
    jetson = target.name.startswith("jetson")
    files = [
        ("model.onnx", "the compressed model as it was verified (FP32), byte for byte"),
        *([("model_fp16.onnx", "the same model in FP16 with FP32 inputs and outputs, checked against model.onnx "
            f"on onnxruntime at build time (max |diff| {facts['tolerance']['fp16_onnx_max_abs_diff']:.3g})")]
          if precision == "fp16" else []),
        ("sample.npz", f"a seeded random input `input` {tuple(io_.input_shape)} and the `expected` output of "
                       "model.onnx on it (onnxruntime, CPU)"),
        ("build_engine.sh", "builds model.engine with trtexec on the device (`--dry-run` prints the command)"),
        ("verify.py", "checks the files against manifest.json, then the engine's output against sample.npz"),
        ("bench.sh", "times model.engine with trtexec (`--dry-run` prints the command)"),
        ("manifest.json", "sha256 and size of every file, input/output, tolerance, target facts, 2:4 layers, "
                          "trtexec flags"),
    ]
    if jetson:
        power = ("Set the maximum power mode and pin the clocks to their maximum, or timings drift with the "
                 "governor (mode 0 is MAXN on the AGX modules; `nvpmodel -q` shows the current mode):")
    else:
        power = ("Lock the GPU clocks so that timings do not drift with boost and temperature (pick a clock from "
                 "`nvidia-smi -q -d SUPPORTED_CLOCKS`; `sudo nvidia-smi --reset-gpu-clocks` undoes it):")
    setup = "\n".join(["   ```sh", *(f"   {command}" for command in target.power_setup), "   ```"])
    versions = (f"JetPack {target.jetpack} ships TensorRT {target.tensorrt}; build_engine.sh reads the version "
                "trtexec reports and picks its flags for it, so other JetPack releases work too."
                if target.jetpack else
                "build_engine.sh reads the version trtexec reports (TensorRT 8.5 or newer) and picks its flags for it.")
    dla = ""
    if target.dla_cores:
        default = (f"This bundle builds for DLA core {facts['dla_core']} by default; `DLA_CORE= ./build_engine.sh` "
                   "builds for the GPU instead." if facts["dla_core"] is not None else
                   "This bundle builds for the GPU; `DLA_CORE=0 ./build_engine.sh` builds for DLA core 0 "
                   "(fp16 bundles only), with unsupported layers falling back to the GPU.")
        dla = f"\nDLA: {target.dla_note}. {default}\n"
    expected_build = facts["expected_build"]
    expected_line = (f"\nWith TensorRT {target.tensorrt} the build runs:\n\n```sh\ntrtexec "
                     f"{' '.join(shlex.quote(a) for a in expected_build)}\n```\n" if expected_build else "")
    sparse_layers = ", ".join(layer["weight"] for layer in facts["two_four"]) or "none"
    bench = BENCH_SETTINGS
    lines = [
        f"# Deploy bundle: {target.name}, {precision}",
        "",
        f"For {target.device}. Made by compressor {compressor.__version__}. Input `{io_.input_name}` "
        f"{list(io_.input_shape)} (batch {io_.input_shape[0]}), output `{io_.output_name}` "
        f"{list(facts['expected'].shape)}.",
        "",
        "## Files",
        "",
        *(f"- `{name}`: {what}" for name, what in files),
        "",
        "The device writes " + ", ".join(f"`{name}`" for name in DEVICE_OUTPUTS[:-1])
        + f" and `{DEVICE_OUTPUTS[-1]}` next to them (`{LAYER_INFO}`: each engine layer's kernel; sparse kernels "
        "have `sparse` in their names).",
        "",
        "## On the device",
        "",
        f"1. Copy this folder to the {'Jetson' if jetson else 'machine'}, e.g. "
        "`scp -r bundle user@device:~/bundle`.",
        f"2. {power}",
        "",
        setup,
        "",
        "3. `./build_engine.sh` builds `model.engine` (a few minutes for large models) and ends with what the "
        "build log says about sparse kernels.",
        "4. `python3 verify.py` checks every file's sha256, runs the engine on the stored input and compares the "
        f"output with the stored one: it must be within {RELATIVE_TOLERANCE[precision]:g} × max |expected| "
        f"({precision}). `python3 verify.py --backend onnxruntime` checks the ONNX model the same way on the CPU.",
        f"5. `./bench.sh` times the engine: CUDA graph, no host copies, spin wait, {bench['warmUp']} ms warm-up, "
        f"at least {bench['duration']} s and {bench['iterations']} runs, times averaged over {bench['avgRuns']} runs "
        "(WARMUP_MS, DURATION_S, ITERATIONS, AVG_RUNS change them).",
        "",
        "## Why the engine is built here",
        "",
        "A TensorRT engine is compiled for one GPU and one TensorRT version and does not load anywhere else, so "
        f"the bundle carries the ONNX models and builds the engine on the device. {versions}",
        expected_line,
        "## 2:4 sparsity on this target",
        "",
        facts["note"],
        "",
        f"2:4 layers (ONNX weights): {sparse_layers}. The manifest lists them with their node names, and the "
        "dense layers with the reason.",
        dla,
    ]
    return "\n".join(lines).rstrip() + "\n"
