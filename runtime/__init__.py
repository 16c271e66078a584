"""Runtime: execute exported models, measure them, and package them for a device.

Backends (`ort_backend`: onnxruntime on CPU, CUDA or TensorRT; `trt_backend`: TensorRT engines;
`torch_dense`: the PyTorch model as it is; `torch_two_four`: the PyTorch model with its 2:4 layers on sparse
tensor cores, built from `semi_structured`'s layers, cuSPARSELt's algorithm chosen per layer) share one small
interface (`run(batch) -> output`, `name`, `input_shape`, `precision`, optionally `measure`), so verification
and latency benchmarks treat them alike; `backends` names them and says why one cannot run here. `bench`
times any backend with the timers of `timing`, `tolerance` says how closely each precision must match FP32,
and `deploy` writes the bundle that builds and checks a TensorRT engine on the device.
"""

from compressor.runtime.bench import BenchResult, benchmark, parse_batch_sizes, results_table
from compressor.runtime.ort_backend import OrtBackend

__all__ = ["BenchResult", "OrtBackend", "benchmark", "parse_batch_sizes", "results_table"]
