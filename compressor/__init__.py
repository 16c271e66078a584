"""compressor: a model-compression compiler for PyTorch.

A trained model goes in; a sparse or thinner ONNX model that provably computes what the compressed network
computes comes out, with a report of what changed and measured latency. `compress`, `export_onnx`,
`benchmark`, `train_model` and `load_model` are the entry points, with `compare_backends` (latency on every
runtime backend) and `build_bundle` (a deploy bundle for a device); the `compress` command wraps them.
"""

import importlib

__version__ = "0.1.0"

# The entry points are resolved on first use: the API imports the passes, which import this package's
# counting module, so an eager import here would make `import passes.<anything>` circular.
_EXPORTS = {
    "benchmark": "compressor.api",
    "build_bundle": "compressor.runtime.deploy",
    "compare_backends": "compressor.latency",
    "compile_model": "compressor.passes.pipeline",
    "compress": "compressor.api",
    "export_onnx": "compressor.passes.pipeline",
    "parse_target": "compressor.api",
    "train_model": "compressor.api",
    "load_model": "compressor.loading",
    "save_checkpoint": "compressor.loading",
    "create_model": "compressor.models",
    "describe_models": "compressor.models",
    "list_models": "compressor.models",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
