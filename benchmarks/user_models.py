"""Models from outside the zoo, compressed end to end on the real digits data: what each method does to them.

The models are the kinds users bring (tests/user_models.py: squeeze-and-excitation, GroupNorm, ResNeXt grouped
convolutions, channel splits, a channel shuffle, a ConvTranspose decoder, bias-free Linear layers, a small ViT,
a model holding a lambda). Each is trained densely for each seed, saved as a pickled module (cloudpickle where
plain pickle cannot), and compressed through the Python API with `trust_model=True`. A row gives, over the
seeds, the dense and compressed test accuracy (mean ± standard deviation), the measured MACs and parameters
removed, the counted sparsity, the worst ONNX-vs-torch difference, onnxruntime latency (batch 1, compressed ÷
dense) and the wall time of a `compress` run; a refusal is shown with its one-line reason.

    python benchmarks/user_models.py                       # every model, 3 seeds
    python benchmarks/user_models.py --models resnext,senet --seeds 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import onnxruntime
import torch

from compressor.api import compress
from compressor.data import load_data
from compressor.errors import CompressorError
from compressor.tables import mean_sd, text_table
from compressor.training import TrainConfig, train

# The models live with the tests, which check what these runs measure.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from user_models import build  # noqa: E402

# (model, method, target, pattern, method options) for each run.
RUNS = [
    ("senet", "magnitude", "85%", "unstructured", {}),
    ("senet", "channel", "30%", "structured", {}),
    ("senet-bias-free", "magnitude", None, "2:4", {}),
    ("groupnorm", "channel", "50%", "structured", {}),
    ("batchnorm", "channel", "50%", "structured", {}),
    ("resnext", "channel", "50%", "structured", {}),
    ("chunk", "channel", "50%", "structured", {}),
    ("split", "channel", "50%", "structured", {"round_to": 1}),
    ("shuffle", "channel", "30%", "structured", {"round_to": 1}),
    ("encoder-decoder", "magnitude", "85%", "unstructured", {}),
    ("encoder-decoder", "channel", "50%", "structured", {"round_to": 1}),
    ("bias-free-mlp", "magnitude", None, "2:4", {}),
    ("tiny-vit", "channel", "30%", "structured", {"round_to": 1}),
    ("lambda", "magnitude", "85%", "unstructured", {}),
]


def _trained(name: str, seed: int, epochs: int, folder: Path) -> Path:
    model = build(name, seed)
    data = load_data("digits", model.input_shape, seed=seed, num_classes=10)
    train(model, data.train, data.test, TrainConfig(epochs=epochs, seed=seed), progress=False)
    path = folder / f"{name}-{seed}.pt"
    torch.save(model, path, pickle_module=cloudpickle)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma-separated model names (default: all of RUNS)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    onnxruntime.set_default_logger_severity(3)  # its warnings narrate graph optimizations, not problems
    torch.set_num_threads(1)  # the same thread count for every run, so latencies compare
    wanted = set(filter(None, args.models.split(",")))
    runs = [run for run in RUNS if not wanted or run[0] in wanted]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        trained = {}
        for name, method, target, pattern, options in runs:
            results, refusal, seconds = [], "", []
            for seed in range(args.seeds):
                key = (name, seed)
                if key not in trained:
                    trained[key] = _trained(name, seed, args.train_epochs, folder)
                out = folder / f"{name}-{method}-{pattern.replace(':', '')}-{seed}"
                started = time.perf_counter()
                try:
                    report = compress(trained[key], method, target, pattern=pattern, epochs=args.finetune_epochs,
                                      trust_model=True, seed=seed, out=out, bench_runs=30, threads=1,
                                      method_options=options, progress=False)
                except CompressorError as error:
                    refusal = str(error)
                    break
                seconds.append(time.perf_counter() - started)
                results.append(report)
            label = f"{method} {pattern if target is None else target}"
            if refusal:
                rows.append([name, label, "refused: " + refusal[:150], "", "", "", "", "", "", ""])
                continue
            structure = [r.structure for r in results if r.structure is not None]
            rows.append([
                name, label,
                mean_sd([r.dense.accuracy for r in results]),
                mean_sd([r.compressed.accuracy for r in results]),
                mean_sd([s.macs_removed for s in structure]) if structure else "-",
                mean_sd([s.params_removed for s in structure]) if structure else "-",
                mean_sd([r.compressed.sparsity for r in results]),
                f"{max(r.onnx.max_abs_diff for r in results):.1e}",
                f"{statistics.fmean(r.latency.compressed_ms / r.latency.dense_ms for r in results):.2f}",
                f"{statistics.fmean(seconds):.1f}",
            ])
    print(text_table(["model", "method", "dense acc %", "compressed acc %", "MACs removed %", "params removed %",
                      "sparsity %", "ONNX max diff", "latency ratio", "compress s"], rows))


if __name__ == "__main__":
    main()
