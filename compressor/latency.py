"""`compress bench`: latency of a compressed model, and of its dense baseline, on every runtime backend.

A model is given as an ONNX file, a checkpoint, or a `compress` output folder (its model.onnx and model.pt).
Every backend of `compressor.runtime.backends` that can run on this machine times every model at every batch size; the
backends that cannot run are listed with the reason. The comparison renders as a table for the terminal, a
JSON document with the machine, versions, settings, every measurement and what each backend reported about
its sparse layers, and a PNG chart of dense vs compressed latency per backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import compressor
from compressor.errors import CompressorError, quoted
from compressor.files import Output, atomic_write, atomic_write_text
from compressor.loading import load_model
from compressor.passes.pipeline import export_onnx
from compressor.paths import is_dir, is_file
from compressor.tables import text_table
from compressor.runtime.backends import BACKENDS, Subject, backend_precision, check_backend, create_backend, unavailable
from compressor.runtime.bench import BenchResult, benchmark, check_batch_sizes
from compressor.runtime.onnx_model import model_input, read_onnx
from compressor.runtime.ort_backend import CPU_PROVIDER, OrtBackend
from compressor.runtime.tolerance import Agreement, check_precision, compare_outputs

logger = logging.getLogger(__name__)

# Results are labelled by the role of their model; a model timed without a baseline is just "model".
DENSE, COMPRESSED, ALONE = "dense", "compressed", "model"


@dataclass
class Comparison:
    """Every measurement of one `compress bench` run, and the backends that could not run."""

    results: list[tuple[str, BenchResult]]  # (model label, result)
    unavailable: dict[str, str]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend → model label → facts
    # (model label, backend) → its output against onnxruntime's FP32 CPU output on the same input
    agreement: dict[tuple[str, str], Agreement] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # label → where it was read from

    def speedups(self) -> list[dict[str, Any]]:
        """Dense median ÷ compressed median per backend and batch, where both were measured."""
        by_key = {(label, r.backend, r.batch): r for label, r in self.results}
        rows = []
        for (label, backend, batch), result in by_key.items():
            dense = by_key.get((DENSE, backend, batch))
            if label == COMPRESSED and dense is not None:
                rows.append({"backend": backend, "batch": batch, "dense_ms": dense.median_ms,
                             "compressed_ms": result.median_ms, "speedup": dense.median_ms / result.median_ms})
        return rows

    def disagreements(self) -> list[str]:
        """One line per (model, backend) whose output was outside its precision's tolerance."""
        return [f"{backend} on the {'' if label == ALONE else label + ' '}model: {a.describe()}"
                for (label, backend), a in self.agreement.items() if not a.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": _versions(),
            "machine": _machine(),
            "settings": self.settings,
            "models": self.models,
            "results": [{"model": label, **result.to_dict()} for label, result in self.results],
            "agreement": [{"model": label, "backend": backend, "precision": a.precision,
                           "max_abs_diff": _finite_or_none(a.max_abs_diff), "tolerance": a.tolerance, "ok": a.ok}
                          for (label, backend), a in self.agreement.items()],
            "speedups": self.speedups(),
            "unavailable": self.unavailable,
            "details": self.details,
        }


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity or NaN; an output that overflowed is recorded as null (and `ok` false)."""
    return value if math.isfinite(value) else None


def _versions() -> dict[str, str | None]:
    import onnxruntime
    import torch

    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except (ImportError, OSError):  # not installed, or its CUDA libraries fail to load
        trt_version = None
    return {"compressor": compressor.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "tensorrt": trt_version}


def _machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpu": gpu}


def load_subject(spec: str | os.PathLike, label: str, arch: str | None = None, trust_model: bool = False,
                 input_shape: Sequence[int] | None = None) -> Subject:
    """A model to time from an ONNX file, a checkpoint (exported here), or a compress output folder."""
    path = Path(spec)
    if is_dir(path, "model"):
        onnx_path, module_path = path / "model.onnx", path / "model.pt"
        if not is_file(onnx_path, "model"):
            raise CompressorError(f"{path} is not a compress output folder: it has no model.onnx")
        model = read_onnx(onnx_path)
        module = load_model(module_path, arch, trust_model, input_shape) if is_file(module_path, "model") else None
        shape = model_input(model).sample_shape
        if module is not None and tuple(module.input_shape) != shape:
            raise CompressorError(f"{path}: model.pt takes {tuple(module.input_shape)}, model.onnx takes {shape}")
        return Subject(label, model, module, shape)
    if not is_file(path, "model"):
        raise CompressorError(f"model not found: {path}")
    if path.suffix.lower() == ".onnx":
        model = read_onnx(path)
        return Subject(label, model, None, model_input(model).sample_shape)
    module = load_model(path, arch, trust_model, input_shape)
    shape = tuple(module.input_shape)
    return Subject(label, export_onnx(module, input_shape=shape).model, module, shape)


def parse_backends(text: str | None) -> tuple[str, ...] | None:
    """'ort-cpu,trt' → ('ort-cpu', 'trt'); None or 'all' → None (every backend that can run here)."""
    if text is None or text.strip() == "all":
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise CompressorError(f"bad --backend {text!r}: expected names such as ort-cpu,torch or 'all'")
    for name in names:
        check_backend(name)
    return tuple(dict.fromkeys(names))


def compare_backends(model: str | os.PathLike | Subject, baseline: str | os.PathLike | Subject | None = None,
                     backends: Sequence[str] | None = None, batch_sizes: Sequence[int] = (1,),
                     precision: str = "fp16", threads: int | None = None, runs: int = 50, warmup: int = 10,
                     arch: str | None = None, trust_model: bool = False,
                     input_shape: Sequence[int] | None = None) -> Comparison:
    """Time `model` (and `baseline`, the dense model, when given) on `backends` (None: all that can run here).

    Each model is a path (see `load_subject`) or a `Subject` already in memory.

    A backend named explicitly that cannot run here is an error; with `backends=None` it is skipped and its
    reason recorded. GPU backends run at `precision`; CPU backends always run FP32 (see `backend_precision`).
    Before timing, each backend's output on a seeded batch is compared with onnxruntime's FP32 output on the CPU
    within the tolerance of the backend's precision (`Comparison.agreement`): a fast backend that computes
    something else is reported, not timed silently.
    """
    check_precision(precision)
    if backends is not None and not backends:
        raise CompressorError("no backend to time: name at least one, or pass None for every backend that runs here")
    batch_sizes = check_batch_sizes(batch_sizes)
    if runs < 1 or warmup < 0:
        raise CompressorError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    sources = {ALONE: model} if baseline is None else {DENSE: baseline, COMPRESSED: model}
    subjects = [replace(source, label=label) if isinstance(source, Subject)
                else load_subject(source, label, arch, trust_model, input_shape) for label, source in sources.items()]
    if len({s.input_shape for s in subjects}) > 1:
        raise CompressorError(f"the baseline takes input {subjects[0].input_shape}, the model "
                              f"{subjects[1].input_shape}: they are not the same network")
    missing = {name: reason for name in (backends or BACKENDS)
               if (reason := _first_reason(name, subjects)) is not None}
    if backends is not None and missing:
        name, reason = next(iter(missing.items()))
        raise CompressorError(f"backend {name} cannot run here: {reason}")
    comparison = Comparison(results=[], unavailable=missing, settings={
        "batch_sizes": list(batch_sizes), "precision": precision, "threads": threads, "runs": runs, "warmup": warmup})
    comparison.models = {label: "in memory" if isinstance(source, Subject) else str(source)
                         for label, source in sources.items()}
    # One seeded batch for the agreement checks: both models take the same input (checked above).
    sample = np.random.default_rng(0).standard_normal((min(batch_sizes), *subjects[0].input_shape), dtype=np.float32)
    reference = {s.label: OrtBackend(s.onnx, providers=[CPU_PROVIDER]).run(sample) for s in subjects}
    for name in (n for n in (backends or BACKENDS) if n not in missing):
        for subject in subjects:
            logger.info("timing %s on %s (%s) ...", subject.label, name, backend_precision(name, precision))
            backend = create_backend(name, subject, precision, threads, tuple(batch_sizes))
            comparison.agreement[(subject.label, name)] = compare_outputs(
                backend.run(sample), reference[subject.label], backend.precision)
            results = benchmark(backend, subject.input_shape, batch_sizes, warmup=warmup, runs=runs)
            comparison.results += [(subject.label, _relabel(r, name)) for r in results]
            describe = getattr(backend, "describe", None)
            if describe is not None:
                comparison.details.setdefault(name, {})[subject.label] = describe()
    return comparison


def _first_reason(name: str, subjects: list[Subject]) -> str | None:
    return next((reason for s in subjects if (reason := unavailable(name, s)) is not None), None)


def _relabel(result: BenchResult, backend: str) -> BenchResult:
    """Results carry the backend's CLI name (ort-cuda, trt, ...) so tables, JSON and chart use one vocabulary."""
    return replace(result, backend=backend)


def comparison_table(comparison: Comparison) -> str:
    """One row per model, backend and batch, with the speedup over the dense model where it was timed."""
    speedups = {(s["backend"], s["batch"]): s["speedup"] for s in comparison.speedups()}
    rows = []
    for label, r in sorted(comparison.results, key=lambda item: (BACKENDS.index(item[1].backend), item[1].batch,
                                                                  item[0] != DENSE)):
        speedup = speedups.get((r.backend, r.batch)) if label == COMPRESSED else None
        agreement = comparison.agreement.get((label, r.backend))
        agrees = "-" if agreement is None else f"{agreement.max_abs_diff:.1e} {'ok' if agreement.ok else 'FAIL'}"
        rows.append([r.backend, label, r.precision, str(r.batch), "-" if r.threads is None else str(r.threads),
                     f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput_per_s:.1f}",
                     "-" if speedup is None else f"{speedup:.2f}x", agrees, r.timer + (" + graph" if r.cuda_graph else "")])
    header = ["backend", "model", "precision", "batch", "threads", "median ms", "p90 ms", "throughput/s", "speedup",
              "vs ort fp32", "timer"]
    lines = [text_table(header, rows, left_columns=3)]
    if comparison.unavailable:
        lines += ["", "not run here:"]
        lines += [f"  {name}: {reason}" for name, reason in comparison.unavailable.items()]
    return "\n".join(lines)


def plot_comparison(comparison: Comparison, path: str | os.PathLike) -> Path:
    """PNG: per batch size, median latency of each model on each backend, bars side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for _, r in comparison.results})
    labels = [label for label in (DENSE, COMPRESSED, ALONE) if any(lbl == label for lbl, _ in comparison.results)]
    colours = {DENSE: "tab:gray", COMPRESSED: "tab:blue", ALONE: "tab:blue"}
    figure, axes_row = plt.subplots(1, len(batches), figsize=(4.5 * len(batches) + 1, 4.2), squeeze=False)
    for axes, batch in zip(axes_row[0], batches):
        names = [b for b in BACKENDS if any(r.backend == b and r.batch == batch for _, r in comparison.results)]
        width = 0.8 / len(labels)
        for offset, label in enumerate(labels):
            values = {r.backend: r.median_ms for lbl, r in comparison.results if lbl == label and r.batch == batch}
            xs = [i + (offset - (len(labels) - 1) / 2) * width for i in range(len(names))]
            axes.bar(xs, [values.get(n, np.nan) for n in names], width, label=label, color=colours[label])
        axes.set_xticks(range(len(names)), names)
        axes.set_title(f"batch {batch}")
        axes.set_ylabel("median latency (ms)")
        axes.legend()
    figure.suptitle("dense vs compressed latency per backend" if len(labels) > 1 else "latency per backend")
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return written


def write_comparison(comparison: Comparison, json_path: str | os.PathLike | None = None,
                     plot_path: str | os.PathLike | None = None) -> None:
    """Write the JSON document and/or the chart, each atomically."""
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n")
    if plot_path is not None:
        plot_comparison(comparison, plot_path)


@contextlib.contextmanager
def comparison_outputs(json_path: str | os.PathLike | None, plot_path: str | os.PathLike | None, force: bool,
                       inputs: Sequence[str | os.PathLike | None] = ()) -> Iterator[tuple[Output | None, ...]]:
    """The --json and --plot outputs of a bench run (None where not asked for), checked and locked before any
    timing starts; write into their `staging` paths and commit them (see `compressor.files.Output`)."""
    if json_path is not None and plot_path is not None and os.path.realpath(json_path) == os.path.realpath(plot_path):
        raise CompressorError(f"--json and --plot name the same file {quoted(json_path)}; give each its own")
    with contextlib.ExitStack() as stack:
        outputs = []
        for path, what in ((json_path, "JSON output"), (plot_path, "chart")):
            output = None
            if path is not None:
                output = stack.enter_context(Output(path, folder=False, what=what, force=force, inputs=inputs))
                output.require_space(0)
            outputs.append(output)
        yield tuple(outputs)
