"""Dense vs 2:4 on every runtime backend this machine has, on GEMM-heavy models where 2:4 can pay.

2:4 sparsity halves the multiply-adds of a layer, but sparse tensor cores only beat dense ones on large GEMMs
(TensorRT picks sparse kernels mainly above ~256 channels). This script builds two such models, a widened
LeNet-300-100 MLP (3x32x32 → 4096 → 4096 → 1024 → 10) and the zoo's VGG-16 (its 3x3 convolutions are 2:4 along
input channels), makes every eligible layer 2:4 by magnitude, checks the 2:4 ONNX against torch on
onnxruntime, and times dense and 2:4 with `compress bench`'s code on each backend that can run here (the rest
are listed with the reason). Weights are seeded random: latency does not depend on their values, only on the
zeros' layout.

    python benchmarks/edge_backends.py --out bench-edge                       # both models, batch 1,32,256
    python benchmarks/edge_backends.py --models mlp --batch 1,256 --precision fp16
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch
import torch.nn as nn

from compressor.api import export_onnx
from compressor.counting import prunable_layers
from compressor.latency import compare_backends, comparison_table, write_comparison
from compressor.models import create_model
from compressor.passes.analysis import two_four_eligibility, two_four_mask
from compressor.runtime.backends import Subject
from compressor.runtime.ort_backend import OrtBackend
from compressor.runtime.tolerance import compare_outputs


def wide_mlp() -> nn.Module:
    """LeNet-300-100's shape, widened until its GEMMs are large enough for sparse tensor cores."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                          nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 10))
    model.input_shape = (3, 32, 32)
    return model


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = wide_mlp() if name == "mlp" else create_model(name)
    return model.eval()


def two_four_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy with every 2:4-eligible layer pruned to its 2 largest of every 4 input channels."""
    sparse = copy.deepcopy(model)
    layers = 0
    with torch.no_grad():
        for _, layer in prunable_layers(sparse):
            if two_four_eligibility(layer).eligible:
                layer.weight.mul_(two_four_mask(layer.weight))
                layers += 1
    return sparse, layers


def subject(model: nn.Module, label: str) -> Subject:
    shape = tuple(model.input_shape)
    onnx_model = export_onnx(model, input_shape=shape).model
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    agreement = compare_outputs(OrtBackend(onnx_model, providers=["CPUExecutionProvider"]).run(x.numpy()), expected,
                                "fp32")
    if not agreement.ok:
        raise SystemExit(f"{label}: ONNX disagrees with torch: {agreement.describe()}")
    return Subject(label, onnx_model, model, shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,vgg16")
    parser.add_argument("--batch", default="1,32,256")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "tf32", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's choice)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="bench-edge")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    batches = tuple(int(b) for b in args.batch.split(","))

    for name in args.models.split(","):
        dense = build(name)
        sparse, layers = two_four_copy(dense)
        comparison = compare_backends(subject(sparse, "compressed"), subject(dense, "dense"), batch_sizes=batches,
                                      precision=args.precision, threads=args.threads, runs=args.runs)
        print(f"\n{name}: {layers} layers 2:4 (every eligible Conv/Linear), precision {args.precision} on GPUs")
        print(comparison_table(comparison))
        for backend, by_model in comparison.details.items():
            facts = by_model.get("compressed", {})
            if "sparse_layers" in facts:
                print(f"  {backend}: layers that ran sparse: {facts['sparse_layers']}")
        write_comparison(comparison, root / f"{name}.json", root / f"{name}.png")
    print(f"\nwrote {root}/: <model>.json and <model>.png per model")


if __name__ == "__main__":
    main()
