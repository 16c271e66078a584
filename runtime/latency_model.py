"""What each prunable layer costs on a backend at each width: measured once, cached on disk, summed per model.

A structured method that aims at latency needs to know what removing a block of channels saves on the backend
the model will run on, and MACs do not say it: onnxruntime's blocked CPU kernels and the GPU's tensor cores
reward some widths and not others. `probe_layers` records every Conv/Linear layer of a model as a `LayerSpec`:
its shape at the input it sees, with the bias and the activation it has once BatchNorm is folded at export
(conv → BatchNorm → ReLU runs as one fused convolution). `LatencyTable` times a spec on one backend at one
batch size, as a one-layer model built directly in ONNX (or in torch for the torch backends), and keeps the
median in a JSON file per (backend, machine), keyed by the layer's shape, batch, precision and threads, so a
second run measures nothing new and an interrupted one resumes where it stopped. `LatencyModel` predicts a
model's latency at any channel widths as the sum of its layers' entries; `measure_models` times whole models
on the same backend so a prediction can be compared with what it predicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import CompressorError
from compressor.files import atomic_write_text
from compressor.runtime.backends import Subject, create_backend, unavailable
from compressor.runtime.bench import measure_backend, time_alternating
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend

logger = logging.getLogger(__name__)

# The backends a latency table can be measured on: onnxruntime's providers and TensorRT run the ONNX, the
# torch ones the module (FP16 and channels-last on the GPU, the layout cuDNN's tensor cores prefer).
LATENCY_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch-cuda", "torch-cpu")
_TORCH = {"torch-cuda": "cuda", "torch-cpu": "cpu"}
CACHE_ENV = "COMPRESSOR_CACHE"
# Each entry is the median of enough runs to fill this many seconds, within these bounds.
MIN_SECONDS, MIN_RUNS, MAX_RUNS, WARMUP = 0.15, 15, 300, 5
# The most rounds `measure_models` takes to fill its seconds.
MAX_ROUNDS = 2000
_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_SAVE_EVERY_S = 2.0
# Layout conversions onnxruntime's CPU provider inserts where its blocked (NCHWc) kernels meet plain tensors.
_LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def default_latency_backend() -> str:
    """`torch-cuda` where torch sees a GPU, else `ort-cpu`."""
    return "torch-cuda" if torch.cuda.is_available() else "ort-cpu"


def check_latency_backend(name: str) -> str:
    """`name` when it is a latency backend, else a one-line error listing them."""
    if name not in LATENCY_BACKENDS:
        raise CompressorError(f"unknown latency backend {name!r}; choose from {', '.join(LATENCY_BACKENDS)}")
    return name


def latency_backend_unavailable(name: str) -> str | None:
    """None when latency backend `name` can run here, else why not, in one line."""
    check_latency_backend(name)
    if name == "torch-cuda":
        return None if torch.cuda.is_available() else "torch sees no CUDA GPU on this machine"
    if name == "torch-cpu":
        return None
    return unavailable(name)


def backend_precision_of(name: str) -> str:
    """The arithmetic a latency backend is timed in: FP16 on GPUs (what deployment uses), FP32 on CPUs."""
    return "fp32" if name in ("ort-cpu", "torch-cpu") else "fp16"


@dataclass(frozen=True)
class LayerSpec:
    """One Conv/Linear layer as it runs after export: its shape, at the input it sees, with its fused epilogue.

    `spatial` is the input's size besides batch and channels (H, W for a 2-D convolution; the token dimensions
    of a Linear applied to more than a vector). `padding` lists the begin then the end pads of each spatial
    axis, as ONNX writes them. A depthwise convolution keeps `groups` equal to its channels at every width.
    """

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...] = ()
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = True
    activation: str | None = None

    def at(self, in_channels: int, out_channels: int) -> LayerSpec:
        """This layer with `in_channels` inputs and `out_channels` outputs."""
        if (in_channels, out_channels) == (self.in_channels, self.out_channels):
            return self
        if self.depthwise:
            return dataclasses.replace(self, in_channels=out_channels, out_channels=out_channels, groups=out_channels)
        return dataclasses.replace(self, in_channels=in_channels, out_channels=out_channels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.spatial) if self.kind == "conv" else (*self.spatial, self.in_channels)

    def key(self) -> str:
        """A stable text naming the shape, for the cache."""
        parts = [self.kind, f"{self.in_channels}>{self.out_channels}", "x".join(map(str, self.spatial)) or "-"]
        if self.kind == "conv":
            parts += [f"k{'x'.join(map(str, self.kernel))}", f"s{'x'.join(map(str, self.stride))}",
                      f"p{'x'.join(map(str, self.padding))}", f"d{'x'.join(map(str, self.dilation))}", f"g{self.groups}"]
        parts += ["bias" if self.bias else "nobias", self.activation or "linear"]
        return " ".join(parts)

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear {self.in_channels}→{self.out_channels}"
        kernel = "x".join(map(str, self.kernel))
        stride = "" if set(self.stride) == {1} else f"/{self.stride[0]}"
        where = "x".join(map(str, self.spatial))
        kind = "dw " if self.depthwise else ""
        return f"{kind}conv{kernel}{stride} {self.in_channels}→{self.out_channels} @{where}"

    def onnx_model(self) -> onnx.ModelProto:
        """A one-layer ONNX model (dynamic batch) computing this layer with seeded random weights."""
        rng = np.random.default_rng(0)
        nodes, inits = [], []
        if self.kind == "conv":
            weight = rng.standard_normal((self.out_channels, self.in_channels // self.groups, *self.kernel))
            inits.append(numpy_helper.from_array(weight.astype(np.float32), "W"))
            inputs = ["x", "W"]
            if self.bias:
                inits.append(numpy_helper.from_array(rng.standard_normal(self.out_channels).astype(np.float32), "B"))
                inputs.append("B")
            nodes.append(helper.make_node("Conv", inputs, ["y0"], kernel_shape=list(self.kernel),
                                          strides=list(self.stride), pads=list(self.padding),
                                          dilations=list(self.dilation), group=self.groups))
        else:
            weight = rng.standard_normal((self.out_channels, self.in_channels)).astype(np.float32)
            if not self.spatial:
                # As the exporter writes a Linear on vectors: Gemm with the weight transposed.
                inits.append(numpy_helper.from_array(weight, "W"))
                inputs = ["x", "W"]
                if self.bias:
                    inits.append(numpy_helper.from_array(rng.standard_normal(self.out_channels).astype(np.float32), "B"))
                    inputs.append("B")
                nodes.append(helper.make_node("Gemm", inputs, ["y0"], transB=1))
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), "W"))
                nodes.append(helper.make_node("MatMul", ["x", "W"], ["m" if self.bias else "y0"]))
                if self.bias:
                    inits.append(numpy_helper.from_array(rng.standard_normal(self.out_channels).astype(np.float32), "B"))
                    nodes.append(helper.make_node("Add", ["m", "B"], ["y0"]))
        if self.activation == "relu":
            nodes.append(helper.make_node("Relu", ["y0"], ["y"]))
        elif self.activation == "relu6":
            inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                      numpy_helper.from_array(np.array(6, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", ["y0", "lo", "hi"], ["y"]))
        else:
            nodes[-1].output[0] = "y"
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *self.sample_shape])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph(nodes, "layer", [x], [y], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return model

    def module(self) -> nn.Module:
        """The same layer as a torch module (seeded random weights)."""
        torch.manual_seed(0)
        if self.kind == "conv":
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.kernel)]
            half = len(self.padding) // 2
            layer = conv(self.in_channels, self.out_channels, self.kernel, self.stride, 0, self.dilation, self.groups,
                         self.bias)
            begin, end = self.padding[:half], self.padding[half:]
            if begin == end:
                layer.padding = tuple(begin)
                parts: list[nn.Module] = [layer]
            else:
                # torch pads each side alike; asymmetric pads (padding="same" with an even kernel) come first.
                pads = [p for axis in reversed(range(half)) for p in (begin[axis], end[axis])]
                parts = [nn.ConstantPad3d(tuple(pads), 0.0) if half == 3 else
                         nn.ConstantPad2d(tuple(pads), 0.0) if half == 2 else nn.ConstantPad1d(tuple(pads), 0.0), layer]
        else:
            parts = [nn.Linear(self.in_channels, self.out_channels, self.bias)]
        if self.activation == "relu":
            parts.append(nn.ReLU())
        elif self.activation == "relu6":
            parts.append(nn.ReLU6())
        module = nn.Sequential(*parts).eval()
        module.input_shape = self.sample_shape
        return module


# On ort-cpu every layer is timed in turn with this one and entered as its time relative to it, times the
# reference's own time as first measured for the table file: on a shared machine the load changes between
# entries measured minutes apart (the same layer measured 2.7 and 4.0 ms), and a ratio taken run by run does not.
REFERENCE_LAYER = LayerSpec("conv", 32, 32, (16, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), activation="relu")


@dataclass
class TimedLayer:
    """A prunable layer of a model, the spec it runs as, and how often one forward pass calls it."""

    name: str
    module: nn.Module
    spec: LayerSpec
    calls: int = 1


def _explicit_padding(layer: nn.Module) -> tuple[int, ...] | None:
    """ONNX pads (begins, then ends) of a convolution, None when its padding mode is not zeros."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        return None
    dims = len(layer.kernel_size)
    if layer.padding == "valid":
        return (0,) * (2 * dims)
    if layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return tuple(t // 2 for t in totals) + tuple(t - t // 2 for t in totals)
    return tuple(layer.padding) * 2


def probe_layers(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[TimedLayer], dict[str, str]]:
    """Every Conv1d/2d/3d and Linear of `model` as it runs on one sample of `input_shape`, and the layers it
    cannot time with the reason (transposed convolutions, non-zero padding modes), which stay out of the sum.

    A layer whose output feeds only a BatchNorm gets the folded bias; one whose (folded) output goes to a ReLU
    or ReLU6 module gets it as its fused activation. Recognising the chain by tensor identity needs the
    tensors alive during the pass, which a forward of one sample allows.
    """
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[nn.Module, int, int, torch.Tensor]] = []
    keep: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple, output: object) -> None:
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            keep.extend((args[0], output))
            calls.append((module, id(args[0]), id(output), args[0]))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    readers: dict[int, list[nn.Module]] = {}
    outputs: dict[int, int] = {}
    for module, input_id, output_id, _ in calls:
        readers.setdefault(input_id, []).append(module)
        outputs[id(module)] = output_id

    def only_reader(tensor_id: int, kinds: tuple[type, ...]) -> nn.Module | None:
        found = readers.get(tensor_id, [])
        return found[0] if len(found) == 1 and isinstance(found[0], kinds) else None

    layers: dict[nn.Module, TimedLayer] = {}
    untimed: dict[str, str] = {}
    for module, _, output_id, tensor in calls:
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            untimed[names[module]] = "transposed convolutions are not timed"
            continue
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if module in layers:
            layers[module].calls += 1
            continue
        norm = only_reader(output_id, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
        after = outputs.get(id(norm)) if norm is not None else output_id
        activation = only_reader(after, tuple(_ACTIVATIONS)) if after is not None else None
        act = _ACTIVATIONS[type(activation)] if activation is not None else None
        bias = module.bias is not None or norm is not None
        if isinstance(module, nn.Linear):
            spec = LayerSpec("linear", module.in_features, module.out_features, tuple(tensor.shape[1:-1]), bias=bias,
                             activation=act)
        else:
            spatial = tuple(tensor.shape[2:])
            padding = _explicit_padding(module)
            if padding is None:
                untimed[names[module]] = f"padding mode {module.padding_mode} is not timed"
                continue
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            spec = LayerSpec("conv", module.in_channels, module.out_channels, spatial, tuple(module.kernel_size),
                             tuple(module.stride), padding, tuple(module.dilation), module.groups, depthwise, bias, act)
        layers[module] = TimedLayer(names[module], module, spec)
    return list(layers.values()), untimed


def _cpu_name() -> str:
    """The processor's model name where the OS tells it (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_identity(backend: str) -> dict[str, object]:
    """What a latency entry depends on besides the layer: the processor or GPU and the library that runs it."""
    import onnxruntime

    identity: dict[str, object] = {"cpu": _cpu_name(), "cpus": os.cpu_count(), "machine": platform.machine()}
    if backend.startswith("torch"):
        identity["torch"] = torch.__version__
    else:
        identity["onnxruntime"] = onnxruntime.__version__
    if backend == "ort-cpu":
        # Entries timed another way are not comparable with these.
        identity["timing"] = f"profiled kernels, relative to {REFERENCE_LAYER.key()} at the same batch and threads"
    if backend in ("ort-cuda", "ort-trt", "trt", "torch-cuda") and torch.cuda.is_available():
        identity["gpu"] = torch.cuda.get_device_name(0)
    if backend in ("ort-trt", "trt"):
        from compressor.runtime.trt_backend import tensorrt_unavailable

        if tensorrt_unavailable() is None:
            import tensorrt

            identity["tensorrt"] = tensorrt.__version__
    return identity


def default_cache_dir() -> Path:
    """$COMPRESSOR_CACHE, else $XDG_CACHE_HOME/compressor, else ~/.cache/compressor."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compressor"


def runner(backend: str, subject: Subject, precision: str, threads: int | None, batch: int,
           alternating: bool = False):
    """A benchmark backend (`run`, `measure`) timing `subject` on latency backend `backend`; `alternating`: it
    is timed in turn with others, so onnxruntime's CPU threads must not spin between its runs (see OrtBackend)."""
    from compressor.runtime.torch_dense import TorchBackend

    if backend == "ort-cpu" and alternating:
        return OrtBackend(subject.onnx, providers=[CPU_PROVIDER], threads=threads, spin_wait=False)
    if backend in _TORCH:
        device = _TORCH[backend]
        return TorchBackend(subject.module, input_shape=subject.input_shape, device=device, precision=precision,
                            threads=threads if device == "cpu" else None, channels_last=device == "cuda")
    return create_backend(backend, subject, precision, threads if backend == "ort-cpu" else None, (batch,))


def _runs_to_fill(first_ms: float) -> int:
    """How many runs of `first_ms` each fill MIN_SECONDS, within MIN_RUNS and MAX_RUNS."""
    return int(min(MAX_RUNS, max(MIN_RUNS, math.ceil(MIN_SECONDS * 1e3 / max(first_ms, 1e-3)))))


def time_runner(timed, sample_shape: Sequence[int], batch: int, warmup: int = WARMUP, runs: int | None = None) -> float:
    """Median milliseconds of one run of `timed` on a seeded batch; with `runs` None, enough runs to fill
    MIN_SECONDS (at least MIN_RUNS, at most MAX_RUNS)."""
    x = np.random.default_rng(0).standard_normal((batch, *sample_shape), dtype=np.float32)
    if runs is None:
        first = measure_backend(timed, x, warmup, 1).times_ms[0]
        runs = _runs_to_fill(first)
    return float(np.median(measure_backend(timed, x, 0, runs).times_ms))


def kernel_times(specs: Sequence[LayerSpec], batch: int, threads: int | None) -> list[np.ndarray]:
    """Per timed run, the milliseconds onnxruntime's CPU provider spends in each of `specs`' kernels, as its
    profiler reports them; the specs run in turn, run by run, so a change in the machine's load falls on all alike.

    A one-layer model timed whole also pays for the call and for the layout reorders the CPU provider puts at a
    model's edges (NCHW to its blocked NCHWc and back), which inside a network happen once, not at every layer.
    Measured on resnet56 at batch 32 (2 threads), its first stage's layers (16 channels at 32x32) timed whole cost
    twice their kernel time and the deeper stages' the same as theirs, so the table rated the first stage at twice
    its share. The profiler's kernel times leave both out.
    """
    # Threads do not spin between runs: an idle session's spinning threads would take the cores of the other.
    sessions = [OrtBackend(spec.onnx_model(), providers=[CPU_PROVIDER], threads=threads, spin_wait=False, profile=True)
                for spec in specs]
    inputs = [np.random.default_rng(0).standard_normal((batch, *spec.sample_shape), dtype=np.float32) for spec in specs]
    first = sum(measure_backend(session, x, WARMUP, 1).times_ms[0] for session, x in zip(sessions, inputs))
    runs = _runs_to_fill(first)
    for _ in range(runs):
        for session, x in zip(sessions, inputs):
            session.run(x)
    return [session.kernel_times(leave_out=_LAYOUT_OPS)[-runs:] for session in sessions]


class LatencyTable:
    """Measured milliseconds of layer specs on one backend at one batch size, cached on disk.

    `measure` replaces the timer (a callable spec → ms): a synthetic table for tests, or another way of
    measuring; the cache works the same either way. `hits` and `measured` count how entries were found.
    """

    def __init__(self, backend: str, batch: int, precision: str | None = None, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, measure: Callable[[LayerSpec], float] | None = None,
                 progress: Callable[[LayerSpec], None] | None = None) -> None:
        check_latency_backend(backend)
        if measure is None:
            reason = latency_backend_unavailable(backend)
            if reason is not None:
                raise CompressorError(f"latency backend {backend} cannot run here: {reason}")
        if batch < 1:
            raise CompressorError(f"the latency batch size must be positive, got {batch}")
        self.backend, self.batch = backend, batch
        self.precision = precision or backend_precision_of(backend)
        self.threads = threads if backend in ("ort-cpu", "torch-cpu") else None
        self.identity = machine_identity(backend)
        digest = hashlib.sha1(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        self.path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "latency" / f"{backend}-{digest}.json"
        self._measure = measure or self._time
        self._progress = progress
        self.entries = self._load()
        self.hits = self.measured = 0
        self.seconds = 0.0
        self._unsaved = 0
        self._saved_at = time.monotonic()

    def _load(self) -> dict[str, float]:
        """The file's entries (none when it is missing or damaged)."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            # A damaged cache costs a re-measurement, not the run.
            logger.warning("ignoring the latency cache %s: %s", self.path, error)
            return {}
        entries = document.get("entries") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            logger.warning("ignoring the latency cache %s: it holds no entries", self.path)
            return {}
        return {key: float(value) for key, value in entries.items()
                if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0}

    def key(self, spec: LayerSpec) -> str:
        threads = "default" if self.threads is None else self.threads
        return f"{spec.key()} | batch {self.batch} | {self.precision} | threads {threads}"

    def ms(self, spec: LayerSpec) -> float:
        """Milliseconds of one run of `spec` at this table's batch: from the cache, else measured now."""
        key = self.key(spec)
        value = self.entries.get(key)
        if value is not None:
            self.hits += 1
            return value
        if self._progress is not None:
            self._progress(spec)
        started = time.perf_counter()
        value = float(self._measure(spec))
        self.seconds += time.perf_counter() - started
        self.entries[key] = value
        self.measured += 1
        self._unsaved += 1
        if time.monotonic() - self._saved_at > _SAVE_EVERY_S:
            self.save()
        return value

    @property
    def reference_key(self) -> str:
        """The entry of the reference layer at this table's batch, precision and threads: what the ort-cpu entries
        of the same setting are relative to."""
        return self.key(REFERENCE_LAYER)

    def _time(self, spec: LayerSpec) -> float:
        if self.backend == "ort-cpu":
            if self.reference_key not in self.entries:
                self.entries[self.reference_key] = float(np.median(
                    kernel_times([REFERENCE_LAYER], self.batch, self.threads)[0]))
                self._unsaved += 1
            times, reference = kernel_times([spec, REFERENCE_LAYER], self.batch, self.threads)
            return float(np.median(times / reference)) * self.entries[self.reference_key]
        subject = Subject(spec.describe(), spec.onnx_model(), spec.module(), spec.sample_shape)
        timed = runner(self.backend, subject, self.precision, self.threads, self.batch)
        return time_runner(timed, spec.sample_shape, self.batch)

    def save(self) -> None:
        """Write the entries measured so far (atomically; other runs' entries in the file are kept)."""
        if not self._unsaved:
            return
        on_disk = self._load()
        scale = 1.0
        ours, theirs = self.entries.get(self.reference_key), on_disk.get(self.reference_key)
        if ours is not None and theirs is not None and ours != theirs:
            # Another run measured this setting's reference first: this run's entries join in the file's.
            scale = theirs / ours
        # An entry already in the file stays as it is: each was measured once, against the file's reference.
        on_disk.update({key: value * scale for key, value in self.entries.items() if key not in on_disk})
        self.entries = on_disk
        document = {"backend": self.backend, "machine": self.identity, "entries": dict(sorted(on_disk.items()))}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(document, indent=1) + "\n")
        except (OSError, CompressorError) as error:
            # An unwritable cache makes the next run measure again; this run has what it needs in memory.
            logger.warning("could not write the latency cache %s: %s", self.path, error)
        self._unsaved = 0
        self._saved_at = time.monotonic()


class LatencyModel:
    """A model's predicted latency on one table: the sum, over its timed layers, of each layer's entry at its
    widths times the calls per forward pass."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], table: LatencyTable) -> None:
        self.table = table
        self.layers, self.untimed = probe_layers(model, input_shape)
        self._by_module = {layer.module: layer for layer in self.layers}

    def layer_ms(self, module: nn.Module, in_channels: int | None = None, out_channels: int | None = None) -> float:
        """The entry of `module`'s layer at the given widths (its own where not given), times its calls."""
        layer = self._by_module[module]
        spec = layer.spec.at(layer.spec.in_channels if in_channels is None else in_channels,
                             layer.spec.out_channels if out_channels is None else out_channels)
        return layer.calls * self.table.ms(spec)

    def __contains__(self, module: nn.Module) -> bool:
        return module in self._by_module

    def predict(self, without: Sequence[str] = ()) -> float:
        """The model's predicted milliseconds at its own widths, leaving out the layers inside the modules named
        in `without` (skip-units a method removes)."""
        inside = tuple(name + "." for name in without)
        return sum(self.layer_ms(layer.module) for layer in self.layers
                   if layer.name not in without and not layer.name.startswith(inside))

    def predict_at(self, widths: Callable[[nn.Module], tuple[int, int] | None]) -> float:
        """The predicted milliseconds with each layer at `widths(module)` (input, output channels); a layer for
        which it gives None is left out (it goes with what a method removes)."""
        total = 0.0
        for layer in self.layers:
            at = widths(layer.module)
            if at is not None:
                total += self.layer_ms(layer.module, *at)
        return total

    def per_layer(self) -> list[tuple[TimedLayer, float]]:
        return [(layer, self.layer_ms(layer.module)) for layer in self.layers]


def measure_models(backend: str, subjects: Sequence[Subject], batch: int, precision: str | None = None,
                   threads: int | None = None, runs: int = 30, warmup: int = 5, seconds: float = 0.0) -> list[float]:
    """Median milliseconds of each of `subjects` on `backend` at `batch`, their runs taken in turn
    (`time_alternating`), so that a machine whose load drifts weighs on every model alike: `runs` runs of each,
    or more where that takes less than `seconds` in all."""
    precision = precision or backend_precision_of(backend)
    reason = latency_backend_unavailable(backend)
    if reason is not None:
        raise CompressorError(f"latency backend {backend} cannot run here: {reason}")
    timed = [runner(backend, subject, precision, threads, batch, alternating=True) for subject in subjects]
    inputs = [np.random.default_rng(0).standard_normal((batch, *s.input_shape), dtype=np.float32) for s in subjects]
    if seconds > 0:
        # The probe round runs after the warm-up runs, so the timed rounds need none of their own.
        one_round_ms = sum(measure_backend(t, x, warmup, 1).times_ms[0] for t, x in zip(timed, inputs))
        runs = max(runs, min(MAX_ROUNDS, math.ceil(seconds * 1e3 / max(one_round_ms, 1e-3))))
        warmup = 0
    return [float(np.median(timing.times_ms)) for timing in time_alternating(timed, inputs, warmup, runs)]
