"""The old import path of the PyTorch backends, kept for one release.

The dense backend is in `compressor.runtime.torch_dense`, torch's 2:4 sparse layers in
`compressor.runtime.semi_structured`, and the torch-24 backend with cuSPARSELt's algorithm search in
`compressor.runtime.torch_two_four`.
"""

from compressor.runtime.semi_structured import (  # noqa: F401
    Conv1x1AsGemm,
    LayerChoice,
    _probe_semi_structured,
    semi_structured_backend,
    semi_structured_candidates,
    semi_structured_unavailable,
)
from compressor.runtime.torch_dense import TorchBackend, _ModuleRunner, cuda_unavailable  # noqa: F401
from compressor.runtime.torch_two_four import (  # noqa: F401
    AlgorithmSearch,
    SemiStructuredBackend,
    cusparselt_algorithm_search,
)
