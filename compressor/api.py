"""The Python API: everything the `compress` command does, callable from Python.

`train_model` trains a dense zoo model and writes a checkpoint; `compress` runs the whole pipeline (load →
method → torch passes → ONNX passes → verification → latency → report) and writes the output folder;
`export_onnx` and `benchmark` are its export and timing stages on their own. The CLI is a thin layer over
these functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch
import torch.nn as nn

import compressor
from compressor.counting import count_layer_macs, count_params, layer_sparsity, prunable_layers
from compressor.data import data_path, load_data
from compressor.distributed import describe_device, group, start, together
from compressor.errors import CompressorError, VerificationError, printable
from compressor.files import Output, state_location
from compressor.loading import (check_finite_weights, load_model, module_pickler, output_classes, save_checkpoint,
                                trained_with)
from compressor.measurements import layer_stats, structure_stats, training_cost
from compressor.methods import create_method
from compressor.methods.base import Method, RunContext
from compressor.models import create_model
from compressor.modules import copy_model
from compressor.options import parse_fraction
from compressor.passes.analysis import has_unbaked_mask
from compressor.passes.bake_masks import BakeMasksPass
from compressor.passes.base import Pipeline
from compressor.passes.check_onnx_sparsity import distinct_weights
from compressor.passes.enforce_two_four import EnforceTwoFourPass
from compressor.passes.fold_batchnorm import fold_batchnorm
# export_onnx is re-exported: it is part of the API (`compressor.export_onnx`).
from compressor.passes.pipeline import compile_model, export_onnx  # noqa: F401
from compressor.report import CompressedStats, DenseStats, LatencyStats, OnnxStats, PassStats, Report, write_report
from compressor.runtime.bench import BenchResult, time_onnx_pair
from compressor.runtime.bench import benchmark as run_benchmark
from compressor.runtime.ort_backend import OrtBackend
from compressor.training import (DEFAULT_WEIGHT_DECAY, TrainConfig, TrainResult, check_config, check_resume_settings,
                                 default_lr, evaluate, train)
from compressor.verify import verify_onnx

logger = logging.getLogger(__name__)

VERIFY_BATCH = 64
# The peak learning rate of dense training under SGD.
DENSE_LR = 0.05


def parse_target(value: str | float) -> float:
    """'85%' or '0.85' (or 0.85) → 0.85; anything outside (0, 1) is an error."""
    return parse_fraction(value, "--target")


def _check_settings(epochs: int, **positive: float | None) -> None:
    """Refuse impossible numeric settings before any work starts; None means "not set"."""
    if epochs < 0:
        raise CompressorError(f"--epochs must be 0 or more, got {epochs}")
    for name, value in positive.items():
        if value is not None and not value > 0:
            raise CompressorError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class TrainOutcome:
    """A trained dense model, its training history and where its checkpoint was written."""

    model: nn.Module
    result: TrainResult
    path: Path | None


def train_model(arch: str, out: str | os.PathLike | None = None, data: str = "digits", epochs: int = 10,
                seed: int = 0, lr: float | None = None, batch_size: int = 64, in_channels: int | None = None,
                num_classes: int = 10, force: bool = False, resume: bool = False, progress: bool = True,
                device: str | torch.device | None = "auto", loss: str = "ce", optimizer: str = "sgd",
                weight_decay: float = DEFAULT_WEIGHT_DECAY, wd_mode: str = "l2") -> TrainOutcome:
    """Train a dense zoo model on `data` on `device` and (if `out` is given) write its checkpoint atomically.

    `loss` is the task loss (`ce`, or `bsp`: the bipolar softplus on log-likelihood-ratio outputs), `optimizer`
    `sgd` (default rate 0.05) or `adam` (1e-3), and `wd_mode` says whether Adam's weight decay is L2 (`l2`) or
    decoupled (`decoupled`, AdamW). The checkpoint records the loss and optimizer, which `compress` then keeps.

    The checkpoint is an `Output` (see `compressor.files`): locked for the run, its resume state beside it.
    Under torchrun every process trains its shard of the data and the main process writes the checkpoint (see
    `compressor.distributed`).
    """
    lr = default_lr(optimizer, DENSE_LR) if lr is None else lr
    _check_settings(epochs, batch_size=batch_size, lr=lr)
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, loss=loss, optimizer=optimizer, weight_decay=weight_decay,
                         wd_mode=wd_mode)
    check_config(config)
    device = start(device)
    with contextlib.ExitStack() as stack:
        output = None
        with together():
            if out is not None and group().main:
                output = stack.enter_context(Output(out, folder=False, what="checkpoint", force=force,
                                                    resume=resume, inputs=[data_path(data)]))
            # Seeded before the model is built, so that the initial weights, too, follow --seed.
            torch.manual_seed(seed)
            model = create_model(arch, num_classes=num_classes, in_channels=in_channels).to(device)
            model.trained_with = {"loss": loss, "optimizer": optimizer}
            if output is not None:
                output.require_space(_run_space(model))
            bundle = load_data(data, model.input_shape, batch_size=batch_size, seed=seed,
                               num_classes=model.num_classes)
        result = train(model, bundle.train, bundle.test, config,
                       state_path=state_location(out, folder=False) if out is not None else None,
                       resume=resume, progress=progress, description=f"train {arch}")
        if output is not None:
            save_checkpoint(model, output.staging, extra={
                "training": {"data": bundle.name, "epochs": epochs, "seed": seed, "lr": lr, "loss": loss,
                             "optimizer": optimizer, "weight_decay": weight_decay, "wd_mode": wd_mode,
                             "test_accuracy": result.test_accuracy}})
            output.commit()
    return TrainOutcome(model.eval(), result, output.destination if output else None)


def _run_space(model: nn.Module) -> int:
    """Bytes a training run writes at its peak: the resume state (weights and momentum) saved beside its
    previous copy, or at the end the state beside the exported model and checkpoint: about four times the
    weights."""
    return 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def benchmark(model: str | os.PathLike | bytes | onnx.ModelProto, batch_sizes: Sequence[int] = (1,),
              threads: int | None = None, runs: int = 50, warmup: int = 10,
              providers: Sequence[str] | None = None) -> list[BenchResult]:
    """Latency of an ONNX model on onnxruntime: median/p90 over `runs` timed runs per batch size."""
    backend = OrtBackend(model, providers=providers, threads=threads)
    return run_benchmark(backend, batch_sizes=batch_sizes, threads=threads, warmup=warmup, runs=runs)


def compress(model: str | os.PathLike | nn.Module, method: str = "magnitude", target: float | str | None = None, *,
             pattern: str = "unstructured", data: str = "digits", epochs: int | None = None, lr: float | None = None,
             batch_size: int = 64, out: str | os.PathLike = "compressed", force: bool = False, resume: bool = False,
             arch: str | None = None, trust_model: bool = False, input_shape: Sequence[int] | None = None,
             seed: int = 0, bench_batch: int = 1, threads: int | None = None, bench_runs: int = 50,
             method_options: dict[str, Any] | None = None, progress: bool = True,
             device: str | torch.device | None = "auto", loss: str | None = None, optimizer: str | None = None,
             weight_decay: float = DEFAULT_WEIGHT_DECAY, wd_mode: str = "l2") -> Report | None:
    """Compress `model` with `method`; write model.onnx, model.pt, report.json/.md and a plot to `out`.

    For structured methods (`method="channel"`) `target` is the fraction of MACs to remove, and the gated model
    is compiled to a physically thinner one (see `compile_model`) before export.

    `epochs` and `lr` default to the method's own (see `Method.default_epochs`; under Adam the rate defaults to
    Adam's own). `loss` and `optimizer` default to those the checkpoint records (cross-entropy and SGD when it
    records none); `weight_decay` and `wd_mode` are the training loop's (see `train_model`). Every input is validated
    before any work starts; the output folder is an `Output` (see `compressor.files`): locked for the run, it
    appears only when the run succeeded, and an interrupted or failed run keeps its training state in a hidden
    sibling folder and continues with `resume=True`.

    The method (its preparation, training and finalisation) and the torch passes run with the model on `device`
    (`auto`: the GPU when torch sees one); the ONNX export, its verification and the checkpoint use a CPU copy.
    Under torchrun the method trains data-parallel (see `compressor.distributed`): the main process writes
    the output and returns the report, the others return None.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    target_value = parse_target(target) if target is not None else None
    compression = create_method(method, target_value, pattern, run=RunContext(bench_batch, threads),
                                **(method_options or {}))
    epochs = compression.default_epochs if epochs is None else epochs
    _check_settings(epochs, lr=lr, batch_size=batch_size, bench_batch=bench_batch, bench_runs=bench_runs,
                    threads=threads)
    # Checked now with stand-ins for what the model's checkpoint decides, so a bad setting stops before any work.
    check_config(TrainConfig(loss=loss or "ce", optimizer=optimizer or "adam", weight_decay=weight_decay,
                             wd_mode=wd_mode))
    training = {"epochs": epochs, "lr": lr, "loss": loss, "optimizer": optimizer, "weight_decay": weight_decay,
                "wd_mode": wd_mode, "seed": seed}
    device = start(device)
    inputs = [data_path(data)] + ([] if isinstance(model, nn.Module) else [model])
    with contextlib.ExitStack() as stack:
        output = None
        with together():
            if group().main:
                output = stack.enter_context(Output(out, folder=True, what="output folder", force=force,
                                                    resume=resume, inputs=inputs))
        report = _compress_into(output, state_location(out, folder=True), device, model, compression, data, training,
                                batch_size, arch, trust_model, input_shape, seed, bench_batch, threads,
                                bench_runs, progress, resume, timings)
        if report is None:
            return None
        timings["total"] = time.perf_counter() - started
        report.seconds = timings
        report.onnx.path = printable(output.destination / "model.onnx")
        write_report(report, output.staging)
        output.commit()
    return report


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str, announce: bool = True):
    # Loading is not announced: it is where bad input is found, and then the error is the only line printed.
    if announce:
        logger.info("%s ...", stage)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _compress_into(output: Output | None, state_path: Path, device: torch.device, source, compression: Method,
                   data_spec, training, batch_size, arch, trust_model, input_shape, seed, bench_batch, threads,
                   bench_runs, progress, resume, timings) -> Report | None:
    """The run itself; `output` is None on the processes of a data-parallel run that write nothing, which
    return None once the method has trained."""
    main = output is not None
    with _timed(timings, "load", announce=False), together():
        if isinstance(source, nn.Module):
            # load_model checks what it reads; a module passed in gets the same check.
            check_finite_weights(source, "the model passed in")
            loaded = source
        else:
            loaded = load_model(source, arch=arch, trust=trust_model, input_shape=input_shape)
        if isinstance(loaded, torch.jit.ScriptModule):
            raise CompressorError("a TorchScript archive can be loaded and exported, but methods need the eager "
                                  "module: give a checkpoint, a state_dict with --arch, or a pickled nn.Module "
                                  "with --trust-model")
        # model.pt is written last: a model that cannot be saved is refused now, before any work.
        module_pickler(loaded)
        # A module passed in is copied: methods attach masks in place, and the caller's model stays as it was.
        model = copy_model(loaded) if loaded is source else loaded
        if main:
            output.require_space(_run_space(model))
        if input_shape is not None:
            model.input_shape = tuple(input_shape)
        if getattr(model, "input_shape", None) is None:
            raise CompressorError("the model's input shape is unknown; give it with --input-shape C,H,W")
        shape = tuple(model.input_shape)
        model = model.to(device)
        outputs = output_classes(model, shape)
        bundle = load_data(data_spec, shape, batch_size=batch_size, seed=seed, num_classes=outputs)
        bundle.check_fits(model)
        config = _method_training(model, compression, training)
        model.trained_with = {"loss": config.loss, "optimizer": config.optimizer}
        if resume:
            # Before any model work: the loop would refuse other settings only once the dense model is measured.
            check_resume_settings(state_path, config, compression.settings(), unchecked=("epochs",))
    if main:
        with _timed(timings, "measure dense"):
            dense = DenseStats(count_params(model), sum(l.macs for l in count_layer_macs(model, shape).values()),
                               evaluate(model, bundle.test))
            dense_onnx = export_onnx(model, input_shape=shape).model
    shapes_before = {name: list(layer.weight.shape) for name, layer in prunable_layers(model)}
    with _timed(timings, "method", announce=main):
        with together():
            model = compression.prepare(model, bundle)
        masked = {name for name, layer in prunable_layers(model) if has_unbaked_mask(layer)}
        trained = compression.fit(model, bundle, config, state_path=state_path,
                                  resume=resume, progress=progress, description=f"{compression.name} training")
        model = compression.finalize(model)
    if not main:
        return None
    structure = None
    with _timed(timings, "torch passes"):
        if compression.structured:
            compiled = compile_model(model, shape, compression.round_to)
        else:
            torch_passes = [BakeMasksPass()] + ([EnforceTwoFourPass()] if compression.pattern == "2:4" else [])
            compiled = Pipeline(torch_passes).run(model)
        model = compiled.model.eval()
        outcome = compression.outcome()
        layers = layer_stats(model, masked, compression)
        if compression.structured:
            structure = structure_stats(model, shape, dense, shapes_before, compiled, outcome)
        two_four_names = [f"{row.name}.weight" for row in layers if row.pattern == "2:4"]
        compressed_accuracy = evaluate(model, bundle.test)
    # Export, verification, counting and the checkpoint read the model on the CPU, where onnxruntime runs.
    model = model.cpu()
    torch_zeros = sum(row.zeros for row in layers)
    weights = sum(row.weights for row in layers)
    sparsity = torch_zeros / weights if weights else 0.0
    facts = {**outcome.metadata(), "tool_version": compressor.__version__, "sparsity": sparsity,
             "layers": {row.name: round(row.sparsity, 6) for row in layers}}
    with _timed(timings, "export"):
        exported = export_onnx(model, output.staging / "model.onnx", shape, facts=facts, expect_two_four=two_four_names)
    with _timed(timings, "verify"):
        check = verify_onnx(model, exported.model, bundle.real_batch(VERIFY_BATCH))
        # A layer called twice (a shared weight) is read by two ONNX nodes but stored, and counted in torch, once.
        onnx_rows = distinct_weights(exported.notes("CheckOnnxSparsity")["layers"])
        onnx_zeros = sum(row.zeros for row in onnx_rows)
        # The ONNX holds BatchNorm-folded weights: a BatchNorm channel with zero scale (a channel kept at zero
        # to round a width) zeroes its whole filter there, so the count to match is the folded model's.
        folded_zeros = sum(row.zeros for row in layer_sparsity(fold_batchnorm(model)))
        if onnx_zeros != folded_zeros:
            raise VerificationError(f"the ONNX holds {onnx_zeros} zero weights but the model {folded_zeros}")
    with _timed(timings, "latency"):
        dense_bench, compressed_bench = time_onnx_pair(dense_onnx, exported.model, shape, bench_batch, threads,
                                                       bench_runs)
    latency_target = None
    if compression.latency_goal is not None:
        with _timed(timings, "latency target"):
            latency_target = compression.latency_goal.outcome(dense_onnx, exported.model, model)
    save_checkpoint(model, output.staging / "model.pt", extra={"compression": facts})
    macs = count_layer_macs(model, shape).values()
    return Report(
        tool_version=compressor.__version__,
        model=printable(source) if not isinstance(source, nn.Module) else type(source).__name__,
        arch=getattr(model, "arch", None),
        input_shape=list(shape),
        data=bundle.name,
        method=compression.name,
        target=compression.target,
        pattern=compression.pattern,
        epochs=config.epochs,
        method_config=outcome.config,
        dense=dense,
        compressed=CompressedStats(
            params=count_params(model),
            params_nonzero=count_params(model) - torch_zeros,
            macs=sum(m.macs for m in macs),
            macs_nonzero=sum(m.macs_nonzero for m in macs),
            sparsity=sparsity,
            accuracy=compressed_accuracy),
        layers=layers,
        onnx=OnnxStats(path="model.onnx", opset=exported.notes("EmitOnnx")["opset"], max_abs_diff=check.max_abs_diff,
                       tolerance=check.tolerance, sparsity=onnx_zeros / sum(r.weights for r in onnx_rows),
                       nodes=len(exported.model.graph.node)),
        latency=LatencyStats(backend=compressed_bench.backend, batch=bench_batch, threads=compressed_bench.threads,
                             dense_ms=dense_bench.median_ms, compressed_ms=compressed_bench.median_ms,
                             dense_p90_ms=dense_bench.p90_ms, compressed_p90_ms=compressed_bench.p90_ms,
                             runs=compressed_bench.runs),
        passes=[PassStats(s.name, s.modified, round(s.seconds, 4)) for s in compiled.steps + exported.steps],
        seconds_per_epoch=trained.seconds_per_epoch if config.epochs else None,
        structure=structure,
        device=describe_device(device),
        processes=group().size,
        training_cost=training_cost(outcome.structure, trained.history),
        training={"loss": config.loss, "optimizer": config.optimizer, "lr": config.lr,
                  "weight_decay": config.weight_decay, "wd_mode": config.wd_mode},
        sections={section.key: section for section in outcome.sections},
        latency_target=latency_target,
    )


def _method_training(model: nn.Module, compression, training: dict[str, Any]) -> TrainConfig:
    """The method's training settings: what the caller gave, else the loss and optimizer the model was trained
    with, and the method's learning rate (Adam's own under Adam)."""
    recorded = trained_with(model)
    optimizer = training["optimizer"] or recorded["optimizer"]
    lr = training["lr"] if training["lr"] is not None else default_lr(optimizer, compression.default_lr)
    config = TrainConfig(epochs=training["epochs"], lr=lr, seed=training["seed"], loss=training["loss"] or recorded["loss"],
                         optimizer=optimizer, weight_decay=training["weight_decay"], wd_mode=training["wd_mode"])
    check_config(config)
    return config
