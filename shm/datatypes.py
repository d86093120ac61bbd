"""Open Inference Protocol v2 datatypes and their numpy equivalents.

``BYTES`` (length-prefixed strings) has no fixed-size numpy form: it lies in shared memory
in its wire form (``shm.bytes_tensor``), its descriptors' dtype is ``"bytes"``, and models
see it as a numpy object array of ``bytes``. It is in ``V2_DATATYPES`` and
``V2_TO_NUMPY_NAME`` but not in ``V2_TO_NUMPY``: code that sizes tensors by itemsize must
treat it on its own.
"""

from __future__ import annotations

import numpy as np

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

BYTES = "BYTES"
V2_DATATYPES = frozenset([*V2_TO_NUMPY, BYTES])

# The numpy name of each (``dtype.name`` is a Python-level property: ~1 µs a time); for
# BYTES, the descriptor dtype ``shm.descriptor.BYTES_DTYPE``.
V2_TO_NUMPY_NAME: dict[str, str] = {name: dt.name for name, dt in V2_TO_NUMPY.items()}
V2_TO_NUMPY_NAME[BYTES] = "bytes"

NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}

# Triton's model-config spelling (``TYPE_FP32``) of each v2 datatype.
V2_TO_CONFIG: dict[str, str] = {name: f"TYPE_{name}" for name in V2_TO_NUMPY}
V2_TO_CONFIG["BYTES"] = "TYPE_STRING"


def numpy_dtype(v2: str) -> np.dtype:
    """The numpy dtype of a v2 datatype; ``KeyError`` when it has none."""
    return V2_TO_NUMPY[v2]


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype; ``KeyError`` when it has none."""
    return NUMPY_TO_V2[np.dtype(dtype)]
