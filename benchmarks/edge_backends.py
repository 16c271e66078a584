"""Dense vs 2:4 on every runtime backend this machine has, on GEMM-heavy models where 2:4 can pay.

2:4 sparsity halves the multiply-adds of a layer, but sparse tensor cores only beat dense ones on large GEMMs
(TensorRT picks sparse kernels mainly above ~256 channels). This script builds three such models, makes every
eligible layer 2:4 by magnitude, checks the 2:4 ONNX against torch on onnxruntime, and times dense and 2:4 with
`compress bench`'s code on each backend that can run here (the rest are listed with the reason). Weights are
seeded random: latency does not depend on their values, only on the zeros' layout.

- `mlp`: LeNet-300-100's shape widened (3x32x32 → 4096 → 4096 → 1024 → 10), at edge batches (1, 32, 256).
- `vgg16`: the zoo's VGG-16 for CIFAR (its 3x3 convolutions are 2:4 along input channels), same batches.
- `gemm`: a transformer MLP block's GEMMs, Linear(4096→16384) → ReLU → Linear(16384→4096) → ReLU →
  Linear(4096→10), on flat 4096-feature inputs, at batches 8192 and 16384, on GPU backends only (a forward
  pass is 2.2 TFLOP at batch 8192: seconds to minutes on a CPU, for each timed run).

`gemm` is the model expected to show `torch-24` faster than dense. torch multiplies a semi-structured Linear
as the product W·xᵀ of the 2:4 weight W [out, in] and the activations x [batch, in], so each sample is one
token and the batch is the GEMM's token dimension: at batch 8192 and 16384 both large layers multiply ≥ 8192
activation rows by weights that are ≥ 4096 in each dimension (16384x4096 and 4096x16384). On an H100 with
cuSPARSELt, 2:4 FP16 beats dense only for GEMMs with ≥ 8192 rows and ≥ 4096 columns (1.4-1.6x), and is 2-20x
slower below 2048 rows; `gemm`'s large layers clear that bar at every batch, the 4096→10 head does not
(10 outputs break the sparse shape rule) and stays dense. `mlp` and `vgg16` run at ≤ 256 rows per GEMM, where
sparse kernels lose, so `torch-24` is expected to keep their layers dense and time like dense (VGG-16's 3x3
convolutions are not one GEMM for it anyway); TensorRT decides for itself per layer.

    python benchmarks/edge_backends.py --out bench-edge                 # all three models, each at its batches
    python benchmarks/edge_backends.py --models gemm --out bench-gemm  # torch-24 vs dense where 2:4 can pay
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
from compressor.runtime.backends import Subject, unavailable
from compressor.runtime.bench import parse_batch_sizes
from compressor.runtime.ort_backend import OrtBackend
from compressor.runtime.tolerance import compare_outputs
from compressor.runtime.torch_dense import cuda_unavailable

EDGE_BATCHES = (1, 32, 256)
# The batch is the GEMM's token dimension: cuSPARSELt's 2:4 kernels pay from 8192 rows on.
GEMM_BATCHES = (8192, 16384)
DEFAULT_BATCHES = {"mlp": EDGE_BATCHES, "vgg16": EDGE_BATCHES, "gemm": GEMM_BATCHES}
GPU_BACKENDS = ("ort-cuda", "ort-trt", "trt", "torch", "torch-24")
# Models too large for a CPU run to finish or to say anything about sparse tensor cores.
GPU_ONLY = {"gemm"}


def wide_mlp() -> nn.Module:
    """LeNet-300-100's shape, widened until its GEMMs are large enough for sparse tensor cores."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                          nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 10))
    model.input_shape = (3, 32, 32)
    return model


def gemm_mlp(features: int = 4096, hidden: int = 16384, classes: int = 10) -> nn.Module:
    """A transformer MLP block's two GEMMs (features → hidden → features) and a classifier head, on flat inputs.

    One sample is one token's `features`, so a batch of B samples makes each Linear a GEMM with B activation
    rows; the defaults are the sizes where cuSPARSELt's 2:4 kernels beat dense ones. Smaller sizes build the same
    structure quickly.
    """
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU(),
                          nn.Linear(features, classes))
    model.input_shape = (features,)
    return model


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    builders = {"mlp": wide_mlp, "gemm": gemm_mlp}
    model = builders[name]() if name in builders else create_model(name)
    return model.eval()


def gpu_backends() -> tuple[list[str], dict[str, str]]:
    """The backends that run on a GPU here, and why each other GPU backend cannot (`torch` runs on the CPU
    where there is no GPU, which does not count)."""
    runnable, missing = [], {}
    for name in GPU_BACKENDS:
        reason = cuda_unavailable() if name == "torch" else unavailable(name)
        if reason is None:
            runnable.append(name)
        else:
            missing[name] = reason
    return runnable, missing


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
    parser.add_argument("--models", default="mlp,vgg16,gemm", help="comma-separated: mlp, vgg16, gemm")
    parser.add_argument("--batch", default=None,
                        help="batch sizes for every model (default: 1,32,256 for mlp and vgg16, 8192,16384 for gemm)")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "tf32", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's choice)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="bench-edge")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    batches = None if args.batch is None else parse_batch_sizes(args.batch)

    written = []
    for name in args.models.split(","):
        backends = None
        if name in GPU_ONLY:
            backends, missing = gpu_backends()
            for backend, reason in missing.items():
                print(f"{name}: {backend} skipped: {reason}")
            if not backends:
                print(f"{name}: skipped, no GPU backend runs here")
                continue
        dense = build(name)
        sparse, layers = two_four_copy(dense)
        comparison = compare_backends(subject(sparse, "compressed"), subject(dense, "dense"), backends=backends,
                                      batch_sizes=batches or DEFAULT_BATCHES.get(name, EDGE_BATCHES),
                                      precision=args.precision, threads=args.threads, runs=args.runs)
        print(f"\n{name}: {layers} layers 2:4 (every eligible Conv/Linear), precision {args.precision} on GPUs")
        print(comparison_table(comparison))
        for backend, by_model in comparison.details.items():
            facts = by_model.get("compressed", {})
            if "sparse_layers" in facts:
                print(f"  {backend}: layers that ran sparse: {facts['sparse_layers']}")
            if "algorithm_search" in facts:
                search = facts["algorithm_search"]
                print(f"  {backend}: cuSPARSELt algorithm search: {search['function'] or 'none'} ({search['reason']})")
        write_comparison(comparison, root / f"{name}.json", root / f"{name}.png")
        written.append(name)
    print(f"\nwrote {root}/: " + (", ".join(f"{n}.json {n}.png" for n in written) or "nothing"))


if __name__ == "__main__":
    main()
