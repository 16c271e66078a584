#!/usr/bin/env python3
"""Check a deploy bundle on the device: its files, then the model's output on the stored sample.

This file is copied unchanged into every bundle and runs where the bundle is deployed, which has TensorRT or
onnxruntime but not the tool that made the bundle: it needs only the Python standard library, numpy and the
chosen runtime.

1. The manifest check: manifest.json must be a JSON object with every key the checks read, each of the right
   kind: `files` (file name -> {"size", "sha256"}, at least one file, the sample and the precision's ONNX model
   among them, each a file of the bundle folder itself), `tolerance.relative` (> 0), `precision`, `input.name`
   and `output.name`; a malformed manifest fails on one line naming every problem. Then every listed file must
   exist with its size and sha256; a missing or changed file fails, a file the manifest does not list is
   reported.
2. The output check: the model runs on the input stored in sample.npz and its output is compared with the
   expected output stored beside it (computed by onnxruntime on the FP32 model when the bundle was made). The
   largest absolute difference may be at most `relative tolerance × max |expected|`, the rule and the fraction
   written in the manifest for the bundle's precision.

Backends: `tensorrt` (default) runs model.engine, the engine build_engine.sh builds on this device, with
device memory from PyTorch when it is installed with CUDA, otherwise from cuda-python; `onnxruntime` runs the
bundle's ONNX model (the FP16 one in an FP16 bundle) on the CPU.

Exit status: 0 and a PASS line when every check passes, 1 and a FAIL line when a check fails or the manifest is
malformed, 2 for bad usage or something missing that the check needs (the manifest, the engine, a Python
package).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
ENGINE = "model.engine"
ENGINE_INFO = "engine_info.txt"
SAMPLE = "sample.npz"
ONNX_BY_PRECISION = {"fp16": "model_fp16.onnx", "fp32": "model.onnx"}
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Usage(Exception):
    """Something the check needs is missing or the command line is wrong: exit status 2."""


class Failure(Exception):
    """A check ran and failed: exit status 1."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest() -> dict:
    """The manifest, once it has everything the checks read; a malformed one fails the bundle."""
    path = BUNDLE / MANIFEST
    if not path.is_file():
        raise Usage(f"{MANIFEST} not found in {BUNDLE}; run verify.py from inside a complete bundle")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise Usage(f"cannot read {MANIFEST}: {error}") from None
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise Failure(f"{MANIFEST}: not valid JSON ({error})") from None
    problems = manifest_problems(manifest)
    if problems:
        raise Failure(f"{MANIFEST}: {'; '.join(problems)}")
    return manifest


def shown(name: str) -> str:
    """A file name as one line of text: names may hold line breaks and other control characters."""
    return name if name.isprintable() else repr(name)


def is_file_name(name: str) -> bool:
    """Whether name is a file of the bundle folder itself: bundles are flat, so no absolute path, `..` or folder."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def is_object(value) -> bool:
    return isinstance(value, dict)


def is_string(value) -> bool:
    return isinstance(value, str)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def is_sha256(value) -> bool:
    return isinstance(value, str) and SHA256_HEX.fullmatch(value) is not None


def is_precision(value) -> bool:
    return isinstance(value, str) and value in ONNX_BY_PRECISION


class Problems:
    """What is wrong with a manifest: the keys it lacks and the values of the wrong kind."""

    def __init__(self):
        self.missing: list[str] = []
        self.wrong: list[str] = []

    def get(self, holder: dict, key: str, label: str, valid, kind: str):
        """holder[key] when it is there and valid, else None once the problem is noted under label."""
        if key not in holder:
            self.missing.append(label)
        elif not valid(holder[key]):
            self.wrong.append(f"{label} is not {kind}")
        else:
            return holder[key]
        return None

    def phrases(self) -> list[str]:
        return ([f"missing {', '.join(self.missing)}"] if self.missing else []) + self.wrong


def manifest_problems(manifest) -> list[str]:
    """Every way the manifest falls short of what the checks read, one phrase each; empty when it has it all."""
    if not is_object(manifest):
        return ["not a JSON object"]
    found = Problems()
    files = found.get(manifest, "files", "files", is_object, "an object")
    for name, fact in (files or {}).items():
        if is_object(fact):
            found.get(fact, "size", f"size of {shown(name)}", is_count, "a whole number")
            found.get(fact, "sha256", f"sha256 of {shown(name)}", is_sha256, "64 hex digits")
        else:
            found.wrong.append(f"files entry {shown(name)} is not an object")
    outside = [shown(name) for name in files or () if not is_file_name(name)]
    if outside:
        found.wrong.append(f"files may only name files in the bundle folder, not {', '.join(outside)}")
    if files == {}:
        found.wrong.append("files lists no files")
    tolerance = found.get(manifest, "tolerance", "tolerance", is_object, "an object")
    if tolerance is not None:
        found.get(tolerance, "relative", "tolerance.relative", is_positive, "a number > 0")
    precision = found.get(manifest, "precision", "precision", is_precision, f"one of {', '.join(ONNX_BY_PRECISION)}")
    if files and precision is not None:
        # The output check reads these two: unlisted, they would go unchecked.
        unlisted = [name for name in (SAMPLE, ONNX_BY_PRECISION[precision]) if name not in files]
        if unlisted:
            found.wrong.append(f"files does not list {', '.join(unlisted)}")
    for key in ("input", "output"):
        tensor = found.get(manifest, key, key, is_object, "an object")
        if tensor is not None:
            found.get(tensor, "name", f"{key}.name", is_string, "a string")
    outputs = manifest.get("device_outputs", [])
    if not (isinstance(outputs, list) and all(map(is_string, outputs))):
        found.wrong.append("device_outputs is not a list of file names")
    return found.phrases()


def check_files(manifest: dict) -> int:
    """Compare every listed file with its recorded size and sha256; return how many were checked."""
    listed = manifest["files"]
    missing = sorted(name for name in listed if not (BUNDLE / name).is_file())
    changed = sorted(
        name for name, fact in listed.items()
        if name not in missing
        and ((BUNDLE / name).stat().st_size != fact["size"] or sha256(BUNDLE / name) != fact["sha256"].lower())
    )
    # Files the device writes (the engine, its build log) and the manifest itself are not part of the bundle.
    known = set(listed) | set(manifest.get("device_outputs", ())) | {MANIFEST}
    extra = sorted(p.name for p in BUNDLE.iterdir() if p.name not in known)
    if extra:
        print(f"note: files not listed in the manifest: {', '.join(map(shown, extra))}")
    problems = []
    if missing:
        problems.append(f"missing {', '.join(map(shown, missing))}")
    if changed:
        problems.append(f"sha256 or size differs for {', '.join(map(shown, changed))}")
    if problems:
        raise Failure(f"manifest: {'; '.join(problems)}")
    return len(listed)


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    with np.load(BUNDLE / SAMPLE) as sample:
        return sample["input"], sample["expected"]


def engine_dla_core() -> int | None:
    """The DLA core build_engine.sh built the engine for, from the engine_info.txt it wrote beside it."""
    path = BUNDLE / ENGINE_INFO
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "dla_core" and value.strip():
            return int(value)
    return None


def run_onnxruntime(manifest: dict, x: np.ndarray) -> tuple[np.ndarray, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Usage("onnxruntime is not installed (pip install onnxruntime), or use the tensorrt backend") from None
    path = BUNDLE / ONNX_BY_PRECISION[manifest["precision"]]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: x})
    return np.asarray(output), f"onnxruntime-cpu on {path.name}"


def _device_memory():
    """(name, allocator) for device buffers: PyTorch with CUDA when present, else cuda-python."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", TorchMemory(torch)
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.6 exposed the runtime API here
        except ImportError:
            raise Usage("device memory needs PyTorch with CUDA or cuda-python (pip install cuda-python); "
                        "or use --backend onnxruntime") from None
    return "cuda-python", CudaPythonMemory(cudart)


class TorchMemory:
    """Device buffers as torch tensors; kernels run on a torch CUDA stream."""

    def __init__(self, torch):
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def to_device(self, array: np.ndarray):
        tensor = self.torch.from_numpy(np.ascontiguousarray(array)).cuda()
        # The copy runs on torch's default stream and the engine on its own one: let the copy finish first.
        self.torch.cuda.synchronize()
        return tensor

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype)).dtype
        return self.torch.empty(shape, dtype=torch_dtype, device="cuda")

    @staticmethod
    def address(buffer) -> int:
        return buffer.data_ptr()

    def synchronize(self) -> None:
        self.stream.synchronize()

    @staticmethod
    def to_host(buffer) -> np.ndarray:
        return buffer.cpu().numpy()

    def close(self) -> None:
        """Tensors free themselves."""


class CudaPythonMemory:
    """Device buffers from cudaMalloc through cuda-python, whose calls return (error, *results)."""

    def __init__(self, cudart):
        self.cudart = cudart
        self.buffers: list[tuple[int, tuple[int, ...], np.dtype]] = []
        self.stream = self.call(cudart.cudaStreamCreate())
        self.handle = int(self.stream)

    def call(self, result):
        error, *values = result
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise Failure(f"CUDA call failed: {error}")
        return values[0] if len(values) == 1 else None

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        buffer = (self.call(self.cudart.cudaMalloc(nbytes)), tuple(shape), np.dtype(dtype))
        self.buffers.append(buffer)
        return buffer

    def to_device(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        buffer = self.empty(array.shape, array.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.cudart.cudaMemcpy(buffer[0], array.ctypes.data, array.nbytes, kind))
        return buffer

    @staticmethod
    def address(buffer) -> int:
        return int(buffer[0])

    def synchronize(self) -> None:
        self.call(self.cudart.cudaStreamSynchronize(self.stream))

    def to_host(self, buffer) -> np.ndarray:
        pointer, shape, dtype = buffer
        host = np.empty(shape, dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.cudart.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, kind))
        return host

    def close(self) -> None:
        for pointer, _, _ in self.buffers:
            self.cudart.cudaFree(pointer)
        self.cudart.cudaStreamDestroy(self.stream)


def run_tensorrt(manifest: dict, x: np.ndarray) -> tuple[np.ndarray, str]:
    engine_path = BUNDLE / ENGINE
    if not engine_path.is_file():
        raise Usage(f"{ENGINE} not found; build it on this device with ./build_engine.sh first "
                    "(or check the ONNX model with --backend onnxruntime)")
    try:
        import tensorrt as trt
    except ImportError:
        raise Usage("the tensorrt Python module is not installed (on Jetson: sudo apt install python3-libnvinfer); "
                    "or use --backend onnxruntime") from None
    memory_name, memory = _device_memory()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        dla_core = engine_dla_core()
        if dla_core is not None:
            runtime.DLA_core = dla_core
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise Usage(f"TensorRT {trt.__version__} cannot load {ENGINE}; an engine only loads with the TensorRT "
                        "version and GPU it was built with: rebuild it with ./build_engine.sh")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_name = manifest["input"]["name"]
        output_name = manifest["output"]["name"]
        if input_name not in names or output_name not in names:
            raise Failure(f"engine tensors {names} do not include input {input_name!r} and output {output_name!r}")
        feed = x.astype(trt.nptype(engine.get_tensor_dtype(input_name)))
        context.set_input_shape(input_name, feed.shape)
        buffers = {input_name: memory.to_device(feed)}
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(name))
                buffers[name] = memory.empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
        for name, buffer in buffers.items():
            context.set_tensor_address(name, memory.address(buffer))
        if not context.execute_async_v3(memory.handle):
            raise Failure("TensorRT could not run the engine (execute_async_v3 returned False)")
        memory.synchronize()
        output = memory.to_host(buffers[output_name])
    finally:
        memory.close()
    where = f"DLA core {dla_core}" if dla_core is not None else "GPU"
    return output, f"tensorrt {trt.__version__} on {where} ({memory_name} memory)"


def compare(actual: np.ndarray, expected: np.ndarray, relative: float) -> tuple[bool, str]:
    """The tolerance rule of the manifest: max |actual − expected| ≤ relative × max |expected|."""
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    tolerance = relative * scale
    if actual.shape != expected.shape:
        return False, f"output shape {actual.shape} differs from the expected {expected.shape}"
    if not np.all(np.isfinite(actual)):
        diff = float("inf")
    else:
        diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    sign = "<=" if diff <= tolerance else ">"
    numbers = (f"max |diff| {diff:.3g} {sign} tolerance {tolerance:.3g} "
               f"({relative:g} x max |expected| {scale:.3g}), output {tuple(actual.shape)}")
    return diff <= tolerance, numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check this deploy bundle's files and its model's output.")
    parser.add_argument("--backend", choices=("tensorrt", "onnxruntime"), default="tensorrt",
                        help="run the TensorRT engine built on this device (default) or the ONNX model on the CPU")
    parser.add_argument("--manifest-only", action="store_true", help="only check the files against the manifest")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest()
        checked = check_files(manifest)
        if args.manifest_only:
            print(f"PASS manifest: {checked} files match their size and sha256")
            return 0
        print(f"manifest: {checked} files match their size and sha256")
        x, expected = load_sample()
        run = run_tensorrt if args.backend == "tensorrt" else run_onnxruntime
        actual, ran = run(manifest, x)
        relative = float(manifest["tolerance"]["relative"])
        ok, numbers = compare(actual, expected, relative)
    except Usage as problem:
        print(f"verify.py: {problem}", file=sys.stderr)
        return 2
    except Failure as failure:
        print(f"FAIL {failure}")
        return 1
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict} {ran}, {manifest['precision']}: {numbers}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
