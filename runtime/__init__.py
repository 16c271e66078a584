"""Runtime: execute exported models and measure them.

Backends run an exported ONNX model behind one small interface (`run(batch) -> output`, `name`,
`input_shape`) so verification and latency benchmarks treat onnxruntime, TensorRT and torch alike;
`bench` times any such backend and renders the results as plain-text tables.
"""

from runtime.bench import BenchResult, benchmark, parse_batch_sizes, results_table
from runtime.ort_backend import OrtBackend

__all__ = ["BenchResult", "OrtBackend", "benchmark", "parse_batch_sizes", "results_table"]
