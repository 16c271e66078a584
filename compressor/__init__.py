"""compressor: a model-compression compiler for PyTorch.

A trained model goes in; a sparse or thinner ONNX model that provably computes what the compressed network
computes comes out, with a report of what changed and measured latency. `compress`, `export_onnx`,
`benchmark`, `train_model` and `load_model` are the entry points; the `compress` command wraps them.
"""

__version__ = "0.1.0"

from compressor.api import benchmark, compress, export_onnx, parse_target, train_model  # noqa: E402
from compressor.loading import load_model, save_checkpoint  # noqa: E402
from compressor.models import create_model, describe_models, list_models  # noqa: E402

__all__ = ["__version__", "benchmark", "compress", "create_model", "describe_models", "export_onnx",
           "list_models", "load_model", "parse_target", "save_checkpoint", "train_model"]
