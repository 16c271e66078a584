"""Dense → compressed on the real digits data: accuracy, counted sparsity, ONNX agreement and latency.

Trains each architecture densely with `compress train`'s code path, compresses it with global magnitude
pruning at the target and with 2:4 magnitude pruning, and prints one table row per run with what was
measured (nothing here is predicted). Latency is onnxruntime on this machine's CPU, dense and compressed
timed in the same process.

    python benchmarks/spine_digits.py --out bench-runs            # lenet5 and resnet20, 85% and 2:4
    python benchmarks/spine_digits.py --models lenet5 --train-epochs 5
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import onnx

from compressor.api import benchmark, compress, export_onnx, train_model
from compressor.loading import load_model
from compressor.tables import text_table
from compressor.passes.check_onnx_sparsity import read_onnx_sparsity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--target", default="85%")
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--batch", default="1,32", help="batch sizes for the latency columns")
    parser.add_argument("--out", default="bench-runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    batches = tuple(int(b) for b in args.batch.split(","))

    rows = []
    for arch in args.models.split(","):
        checkpoint = root / f"{arch}.pt"
        if not checkpoint.exists():
            train_model(arch, checkpoint, epochs=args.train_epochs, progress=False)
        for pattern in ("unstructured", "2:4"):
            target = args.target if pattern == "unstructured" else None
            out = root / f"{arch}-{pattern.replace(':', 'of')}"
            report = compress(checkpoint, "magnitude", target, pattern=pattern, epochs=args.finetune_epochs,
                              out=out, force=True, progress=False)
            onnx_rows = read_onnx_sparsity(onnx.load(out / "model.onnx"))
            onnx_zeros = sum(r.zeros for r in onnx_rows)
            eligible = [r for r in report.layers if r.pattern == "2:4"]
            eligible_sparsity = (sum(r.zeros for r in eligible) / sum(r.weights for r in eligible)) if eligible else None
            dense_onnx = root / f"{arch}-dense.onnx"
            latency = {}
            for batch in batches:
                dense_ms = benchmark(_dense_onnx(checkpoint, dense_onnx), (batch,), threads=2)[0].median_ms
                compressed_ms = benchmark(out / "model.onnx", (batch,), threads=2)[0].median_ms
                latency[batch] = f"{dense_ms:.3f} → {compressed_ms:.3f}"
            rows.append([
                arch, pattern, f"{report.dense.accuracy:.2%} → {report.compressed.accuracy:.2%}",
                f"{report.compressed.sparsity:.2%}",
                f"{eligible_sparsity:.2%}" if eligible_sparsity is not None else "-",
                "yes" if onnx_zeros == sum(r.zeros for r in report.layers) else "NO",
                f"{report.onnx.max_abs_diff:.1e}",
                *[latency[b] for b in batches],
                f"{report.seconds['total']:.0f}",
            ])
    header = ["model", "pattern", "accuracy dense → compressed", "sparsity (counted)", "2:4 layers",
              "ONNX zeros = report", "max |ort − torch|", *[f"ms b={b} dense → compr." for b in batches],
              "run s"]
    table = text_table(header, rows)
    print(table)
    (root / "table.txt").write_text(table + "\n")


def _dense_onnx(checkpoint: Path, path: Path) -> Path:
    if not path.exists():
        export_onnx(load_model(checkpoint), path)
    return path


if __name__ == "__main__":
    main()
