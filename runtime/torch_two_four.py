"""The torch-24 backend: the PyTorch model in FP16 on CUDA with its 2:4 layers on sparse tensor cores.

`SemiStructuredBackend` (`torch-24`) runs the model with the weight of every eligible 2:4 layer (see
`compressor.runtime.semi_structured`) stored as a semi-structured sparse tensor, so that it measures what 2:4
sparsity gains on the GPU's sparse tensor cores against the same model dense. Each such layer is timed dense and
sparse on the input it really receives and stays sparse only where that is faster, the way TensorRT picks sparse
kernels only where they pay. With cuSPARSELt the sparse form is timed with each algorithm cuSPARSELt's own search
picks at the benchmark's batch sizes as well as with its default one (`cusparselt_algorithm_search` says which
search this torch offers).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import CompressorError, first_line
from compressor.runtime.bench import check_batch_sizes
from compressor.runtime.semi_structured import (
    Conv1x1AsGemm,
    LayerChoice,
    _sparse_layer,
    _tensor_class,
    semi_structured_backend,
    semi_structured_candidates,
    semi_structured_unavailable,
)
from compressor.runtime.timing import Timing, time_cuda
from compressor.runtime.tolerance import Agreement, compare_outputs
from compressor.runtime.torch_dense import TorchBackend, _ModuleRunner

logger = logging.getLogger(__name__)

# Per-layer timing only has to rank two variants of one layer, so it uses fewer runs than the benchmark.
_LAYER_WARMUP = 5
_LAYER_RUNS = 20

# The searches torch has offered for cuSPARSELt's algorithm, newest first. `torch._C._cusparselt.mm_search` also
# returns the split-k it found; newer torch builds deprecate `torch._cslt_sparse_mm_search` in its favour.
_SEARCH_BINDING = "torch._C._cusparselt.mm_search"
_SEARCH_OP = "torch._cslt_sparse_mm_search"


@dataclass(frozen=True)
class AlgorithmSearch:
    """How torch-24 chooses cuSPARSELt's algorithm (`alg_id`) for a sparse weight.

    `function` is the search torch offers (`torch._C._cusparselt.mm_search` or `torch._cslt_sparse_mm_search`),
    or None when there is none to use; `reason` says what that means for the sparse weights.
    """

    function: str | None
    reason: str

    @property
    def available(self) -> bool:
        return self.function is not None

    def to_dict(self) -> dict:
        return {"function": self.function, "available": self.available, "reason": self.reason}


def cusparselt_algorithm_search(backend: str) -> AlgorithmSearch:
    """Which cuSPARSELt algorithm search this torch offers to the semi-structured `backend`, answered without a GPU.

    A searched algorithm only reaches the matmul through `SparseSemiStructuredTensorCUSPARSELT.from_dense(...,
    alg_id=...)`, so a torch whose `from_dense` takes no `alg_id` has no usable search either. Without one every
    sparse weight keeps cuSPARSELt's default algorithm (alg_id 0).
    """
    _tensor_class(backend)
    if backend != "cusparselt":
        return AlgorithmSearch(None, "torch's CUTLASS 2:4 kernels have no algorithm to choose; cuSPARSELt's "
                                     "search does not apply")
    fallback = "every sparse weight uses cuSPARSELt's default algorithm (alg_id 0)"
    if "alg_id" not in inspect.signature(_tensor_class(backend).from_dense).parameters:
        return AlgorithmSearch(None, f"this torch's ({torch.__version__}) SparseSemiStructuredTensorCUSPARSELT."
                                     f"from_dense takes no alg_id, so {fallback}")
    if callable(getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)):
        return AlgorithmSearch(_SEARCH_BINDING, "searched per sparse layer at each batch size; the fastest of "
                                                "the algorithms found and the default is kept")
    if callable(getattr(torch, "_cslt_sparse_mm_search", None)):
        return AlgorithmSearch(_SEARCH_OP, "searched per sparse layer at each batch size; the fastest of the "
                                           "algorithms found and the default is kept")
    return AlgorithmSearch(None, f"this torch ({torch.__version__}) offers neither {_SEARCH_BINDING} nor "
                                 f"{_SEARCH_OP}, so {fallback}")


def _gemm_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation matrix a sparse layer's GEMM multiplies for input `x`: [rows, in] with one row per sample
    (per pixel for a 1x1 convolution)."""
    if isinstance(layer, Conv1x1AsGemm):
        return layer.rows(x)
    return x.reshape(-1, x.shape[-1])


def _search_algorithm(search: AlgorithmSearch, layer: nn.Module, x: torch.Tensor) -> tuple[int, int | None]:
    """cuSPARSELt's fastest algorithm for the sparse GEMM `layer` runs on input `x`, and the split-k it chose
    (None where the search does not report it).

    torch multiplies `F.linear(x, W)` as W·xᵀ with the activation rows padded to the dense minimum shape and the
    result written transposed (`torch.ops.semi_structured.cusparselt_mm`); the search is run on that same product.
    """
    weight = layer.weight
    rule = weight._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows = _gemm_rows(layer, x)
    pad_rows, pad_cols = -rows.shape[0] % rule.dense_min_rows, -rows.shape[1] % rule.dense_min_cols
    if pad_rows or pad_cols:
        rows = F.pad(rows, (0, pad_cols, 0, pad_rows))
    if search.function == _SEARCH_BINDING:
        # A pybind11 function: positional arguments only (compressed A, dense B, bias, alpha, out_dtype,
        # transpose_result); it returns (alg_id, split_k, split_k_mode, max_alg_id).
        alg_id, split_k, *_ = torch._C._cusparselt.mm_search(weight.packed, rows.t(), layer.bias, None, None, True)
        return int(alg_id), int(split_k)
    if search.function == _SEARCH_OP:
        return int(torch._cslt_sparse_mm_search(weight.packed, rows.t(), bias=layer.bias, transpose_result=True)), None
    raise CompressorError(f"no cuSPARSELt algorithm search to run: {search.reason}")


def _capture_inputs(model: nn.Module, names: Sequence[str], samples: Sequence[torch.Tensor],
                    ) -> dict[str, list[list[torch.Tensor]]]:
    """For each layer, the inputs it receives in a forward pass of each sample (one list per sample)."""
    captured: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in samples] for name in names}
    current = [0]

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # A copy: a later in-place op of the model (a ReLU, a residual add) may overwrite the input tensor.
            captured[name][current[0]].append(args[0].clone())
        return hook

    handles = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        with torch.inference_mode():
            for index, sample in enumerate(samples):
                current[0] = index
                model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _median_ms(timing: Timing) -> float:
    return float(np.median(timing.times_ms))


def _time_steps(steps: Sequence[Callable[[], object]]) -> list[float]:
    """Median ms of each step, all timed as CUDA graphs or all as eager launches."""
    timings = [time_cuda(step, _LAYER_WARMUP, _LAYER_RUNS) for step in steps]
    # A replayed graph has no launch overhead and eager launches do: compare like with like.
    if len({timing.cuda_graph for timing in timings}) > 1:
        timings = [time_cuda(step, _LAYER_WARMUP, _LAYER_RUNS, graph=False) if timing.cuda_graph else timing
                   for step, timing in zip(steps, timings)]
    return [_median_ms(timing) for timing in timings]


def _layer_disagreement(dense: nn.Module, sparse: nn.Module, inputs: Sequence[torch.Tensor]) -> str | None:
    for x in inputs:
        agreement = compare_outputs(sparse(x).float().cpu().numpy(), dense(x).float().cpu().numpy(), "fp16")
        if not agreement.ok:
            return agreement.describe()
    return None


class SemiStructuredBackend(_ModuleRunner):
    """`torch-24`: the model in FP16 on CUDA with its 2:4 layers as semi-structured sparse GEMMs where they pay.

    At construction the dense FP16 model (`dense`, a `TorchBackend` with the same settings, which is also the
    baseline to time against) runs seeded random batches of each size in `batch_sizes`; a forward hook records
    what every eligible layer receives. Each eligible layer is then timed dense and sparse on those inputs, and
    is swapped for its sparse form (a `Linear` with a semi-structured weight, or `Conv1x1AsGemm`) only where the
    sparse form is faster over the batch sizes and agrees with the dense layer. `layers` records every
    Conv/Linear layer's choice and reason. Finally the whole model is checked against the dense one within the
    FP16 tolerance (`agreement`); a model that disagrees is an error.

    torch runs `F.linear(x, W)` with a semi-structured W as the sparse-times-dense product W·xᵀ: the 2:4 weight
    is the [out_features, in_features] operand (cuSPARSELt's m x k, sparse along k) and the batch (N·H·W for a
    1x1 convolution) is the dense operand's n columns, so the batch sizes set the GEMMs' third dimension. With
    cuSPARSELt, which kernel runs a GEMM depends on all three: where this torch offers cuSPARSELt's algorithm
    search (`algorithm_search`, see `cusparselt_algorithm_search`), it runs once per eligible layer at each batch
    size on the layer's captured input, and the sparse form is timed with every algorithm found as well as the
    default; the fastest becomes the layer's sparse form (`LayerChoice.alg_id`, `LayerChoice.alg_search`). A
    split-k the search reports is recorded but not applied: a semi-structured tensor carries only `alg_id`.
    Where torch offers no search, the default algorithm is timed and `describe()` says so.

    torch pads the activation rows of a sparse GEMM to its minimum dense shape (8 rows for FP16) and cuts the
    result back, so any batch size runs; that padding is part of what the per-layer timing measures. So is the
    layout copy a sparse 1x1 convolution makes when `channels_last` is off; with it on (the default) the GEMM
    reads the activations in place.
    """

    name = "torch-24"

    def __init__(self, model: nn.Module, input_shape: Sequence[int] | None = None,
                 batch_sizes: Sequence[int] = (1,), channels_last: bool = True, seed: int = 0) -> None:
        reason = semi_structured_unavailable()
        if reason is not None:
            raise CompressorError(f"torch-24 cannot run here: {reason}")
        batch_sizes = check_batch_sizes(batch_sizes)
        self.dense = TorchBackend(model, input_shape, device="cuda", precision="fp16", channels_last=channels_last)
        self.backend = semi_structured_backend()
        self.algorithm_search = cusparselt_algorithm_search(self.backend)
        self.batch_sizes = batch_sizes
        sample_shape = tuple(self.dense.input_shape[1:])
        inputs = [np.random.default_rng(seed).standard_normal((b, *sample_shape), dtype=np.float32)
                  for b in batch_sizes]

        candidates = semi_structured_candidates(self.dense.model, self.backend)
        eligible = [c.name for c in candidates if c.eligible]
        captured = _capture_inputs(self.dense.model, eligible, [self.dense._device_input(x) for x in inputs])
        sparse_model = copy.deepcopy(self.dense.model)
        self.layers = []
        for choice in candidates:
            if choice.eligible:
                choice, layer = self._choose(choice, captured.pop(choice.name))
                if choice.sparse:
                    sparse_model.set_submodule(choice.name, layer)
            self.layers.append(choice)
        del captured
        self._prepare(sparse_model, sample_shape, "cuda", "fp16", channels_last, None)

        agreements = [compare_outputs(self.run(x), self.dense.run(x), "fp16") for x in inputs]
        self.agreement: Agreement = max(agreements, key=lambda a: a.max_abs_diff - a.tolerance)
        if not self.agreement.ok:
            raise CompressorError(
                f"torch-24 does not compute what the dense FP16 model computes: {self.agreement.describe()}")

    def _choose(self, choice: LayerChoice, inputs: list[list[torch.Tensor]]) -> tuple[LayerChoice, nn.Module | None]:
        """Time one eligible layer dense and sparse (with each candidate algorithm) on its captured inputs; keep
        the fastest sparse form where it beats dense."""
        if not any(inputs):
            return dataclasses.replace(choice, reason="not called in a forward pass, left dense"), None
        dense_layer = self.dense.model.get_submodule(choice.name)
        samples = [x for xs in inputs for x in xs]
        try:
            sparse_layer = _sparse_layer(dense_layer, self.backend)
            with torch.inference_mode():
                disagreement = _layer_disagreement(dense_layer, sparse_layer, samples)
                if disagreement is not None:
                    reason = f"sparse result differs from dense ({disagreement}), left dense"
                    return dataclasses.replace(choice, reason=reason), None
                variants, search_note = self._algorithm_variants(dense_layer, sparse_layer, inputs, samples)
                times = [_time_steps([lambda xs=xs: [dense_layer(x) for x in xs]]
                                     + [lambda xs=xs, layer=layer: [layer(x) for x in xs] for _, layer in variants])
                         for xs in inputs if xs]
        except RuntimeError as error:
            return dataclasses.replace(choice, reason=f"sparse kernel failed ({first_line(error)}), left dense"), None
        dense_ms = sum(t[0] for t in times)
        variant_ms = [sum(t[i + 1] for t in times) for i in range(len(variants))]
        best = min(range(len(variants)), key=variant_ms.__getitem__)
        alg_id, sparse_layer = variants[best]
        sparse_ms = variant_ms[best]
        if search_note is not None and len(variants) > 1:
            timed = ", ".join(f"alg_id {a}: {ms:.4f} ms" for (a, _), ms in zip(variants, variant_ms))
            search_note = f"{search_note}; timed {timed}; kept alg_id {alg_id}"
        sparse = sparse_ms < dense_ms
        verdict = "sparse is faster" if sparse else "dense is as fast or faster, left dense"
        reason = f"{verdict} ({sparse_ms:.4f} ms sparse vs {dense_ms:.4f} ms dense)"
        logger.info("torch-24: %s %s: %s", choice.kind, choice.name, reason)
        chosen = dataclasses.replace(choice, sparse=sparse, reason=reason, dense_ms=dense_ms, sparse_ms=sparse_ms,
                                     alg_id=alg_id, alg_search=search_note)
        return chosen, sparse_layer if sparse else None

    def _algorithm_variants(self, dense_layer: nn.Module, default_layer: nn.Module,
                            inputs: list[list[torch.Tensor]], samples: list[torch.Tensor],
                            ) -> tuple[list[tuple[int | None, nn.Module]], str | None]:
        """The sparse forms of one layer worth timing, as (alg_id, layer): cuSPARSELt's default algorithm and each
        one its search picks at the batch sizes, with a line on what the search found (None with CUTLASS)."""
        if self.backend != "cusparselt":
            return [(None, default_layer)], None
        default = int(default_layer.weight.alg_id_cusparselt)
        variants: list[tuple[int | None, nn.Module]] = [(default, default_layer)]
        if not self.algorithm_search.available:
            return variants, f"not searched, default alg_id {default}: {self.algorithm_search.reason}"
        try:
            # One search per batch size, on the layer's first call at that size.
            found = [(batch, *_search_algorithm(self.algorithm_search, default_layer, xs[0]))
                     for batch, xs in zip(self.batch_sizes, inputs) if xs]
        except RuntimeError as error:
            return variants, f"{self.algorithm_search.function} failed ({first_line(error)}), default alg_id {default}"
        notes = [f"{self.algorithm_search.function} found "
                 + ", ".join(f"alg_id {alg_id}" + ("" if split_k in (None, 1) else f" (split_k {split_k}, not applied)")
                             + f" at batch {batch}" for batch, alg_id, split_k in found)]
        for alg_id in sorted({alg_id for _, alg_id, _ in found} - {default}):
            # A searched algorithm that fails or computes something else costs only itself, not the layer.
            try:
                # Built as the default form was, outside inference mode, so that only the algorithm differs.
                with torch.inference_mode(False):
                    layer = _sparse_layer(dense_layer, self.backend, alg_id)
                disagreement = _layer_disagreement(dense_layer, layer, samples)
            except RuntimeError as error:
                notes.append(f"alg_id {alg_id} failed ({first_line(error)}), not used")
                continue
            if disagreement is None:
                variants.append((alg_id, layer))
            else:
                notes.append(f"alg_id {alg_id} differs from dense ({disagreement}), not used")
        return variants, "; ".join(notes)

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the layers that run as sparse GEMMs."""
        return [c.name for c in self.layers if c.sparse]

    def describe(self) -> dict:
        """The backend's settings (the cuSPARSELt algorithm search among them), every layer's choice, and the
        agreement with the dense FP16 model."""
        return {
            **super().describe(),
            "library": self.backend,
            "algorithm_search": self.algorithm_search.to_dict(),
            "batch_sizes": list(self.batch_sizes),
            "eligible_layers": sum(c.eligible for c in self.layers),
            "sparse_layers": len(self.sparse_layers),
            "layers": [c.to_dict() for c in self.layers],
            "agreement": {"max_abs_diff": self.agreement.max_abs_diff, "tolerance": self.agreement.tolerance},
        }

    def __repr__(self) -> str:
        return (f"SemiStructuredBackend(input_shape={self.input_shape}, library={self.backend!r}, "
                f"sparse_layers={len(self.sparse_layers)}/{sum(c.eligible for c in self.layers)} eligible)")
