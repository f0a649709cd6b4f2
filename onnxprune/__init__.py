"""onnxprune: make trained networks physically smaller, from ONNX to ONNX.

import onnxprune
model, report = onnxprune.ocnna("model.onnx", k=40, data="dvar.npz")
"""

__version__ = "0.1.0"

from .errors import DataError, ModelError, OnnxPruneError, OutputError, ParameterError  # noqa: E402
from .inspection import inspect  # noqa: E402
from .methods.ocnna import ocnna  # noqa: E402
from .methods.odf2nna import odf2nna  # noqa: E402
from .methods.odf2nna_dataset import odf2nna_from_dataset  # noqa: E402
from .pipeline import PruneResult, prune_channels  # noqa: E402
from .quantize import quantize  # noqa: E402

__all__ = [
    "__version__",
    "ocnna",
    "odf2nna",
    "odf2nna_from_dataset",
    "prune_channels",
    "inspect",
    "quantize",
    "PruneResult",
    "OnnxPruneError",
    "ModelError",
    "DataError",
    "ParameterError",
    "OutputError",
]
