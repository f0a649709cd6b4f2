"""Load and save models (atomically) and read sample data (.npz / .npy / arrays)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import DataError, ModelError, OutputError

ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


# ----------------------------------------------------------------------------- models


def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX model (or convert a Keras one), every failure a one-line ModelError."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.suffix.lower() in (".keras", ".h5", ".hdf5") or (path / "saved_model.pb").is_file():
        from .keras.convert import keras_to_onnx  # TensorFlow only for Keras inputs

        return keras_to_onnx(path)[0]
    if path.is_dir():
        raise ModelError(f"model path is a directory, not an ONNX file: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for garbage
        raise ModelError(f"not a readable ONNX model: {path} ({type(exc).__name__})") from exc
    if not proto.graph.node:
        raise ModelError(f"not a readable ONNX model (no graph nodes): {path}")
    return proto


def model_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, streamed; used for provenance and to prove inputs are untouched."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, payload: bytes, force: bool = False) -> Path:
    """Write ``payload`` to ``path`` via a temp file + rename: never a partial file."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"output exists (use --force to overwrite): {path}")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"output directory does not exist: {directory}")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give normal permissions
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Serialize and write a model atomically."""
    return atomic_write_bytes(path, model.SerializeToString(), force=force)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class InputSpec:
    """What one model input expects: name, numpy dtype and shape (None = dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real (non-initializer) inputs of a model."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(ONNX_TO_NUMPY.get(tensor_type.elem_type, np.float32))
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


class Dataset:
    """Model-ready samples: one array per model input (may be memory-mapped) + labels.

    Batches are cast to the model's dtypes lazily, so a memory-mapped ``.npy`` never has
    to fit in RAM.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        specs: list[InputSpec],
        labels: np.ndarray | None = None,
        source: str = "<array>",
    ):
        self.arrays = dict(arrays)
        self.specs = specs
        self.labels = labels
        self.source = source

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs insist on, if they do (old model-zoo graphs):
        onnxruntime rejects any other, so every batch of such data has that size."""
        fixed = {spec.shape[0] for spec in self.specs if spec.shape and spec.shape[0]}
        return fixed.pop() if len(fixed) == 1 else None

    def batch_size(self, wanted: int) -> int:
        """``wanted``, unless the model fixes the batch size."""
        return self.fixed_batch or wanted

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive feeds of at most ``batch_size`` samples (exactly the fixed batch for
        fixed-batch models), cast to the model dtypes."""
        batch_size = self.batch_size(batch_size)
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            yield {
                spec.name: np.ascontiguousarray(self.arrays[spec.name][start:stop], spec.dtype)
                for spec in self.specs
            }

    def num_batches(self, batch_size: int, limit: int | None = None) -> int:
        count = len(self) if limit is None else min(limit, len(self))
        return -(-count // self.batch_size(batch_size))

    def subset(self, count: int) -> Dataset:
        """The first ``count`` samples (a view)."""
        labels = None if self.labels is None else self.labels[:count]
        arrays = {name: array[:count] for name, array in self.arrays.items()}
        return Dataset(arrays, self.specs, labels, self.source)

    def spread(self, count: int) -> Dataset:
        """``count`` samples evenly spaced over the whole set (data sorted by class keeps
        every class), a whole number of fixed batches; all of it when it is not larger."""
        count -= count % (self.fixed_batch or 1)
        if count <= 0 or count >= len(self):
            return self
        return self.take(np.linspace(0, len(self) - 1, count).round().astype(np.int64))

    def take(self, index: np.ndarray) -> Dataset:
        """The samples at ``index`` (copied)."""
        labels = None if self.labels is None else np.asarray(self.labels)[index]
        arrays = {name: np.asarray(array[index]) for name, array in self.arrays.items()}
        return Dataset(arrays, self.specs, labels, self.source)


DataLike = str | os.PathLike | np.ndarray | Mapping[str, np.ndarray] | Dataset


def _read_arrays(data: DataLike) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(data, np.ndarray):
        return {"x": data}, "<array>"
    if isinstance(data, Mapping):
        return {key: np.asarray(value) for key, value in data.items()}, "<arrays>"
    path = Path(data)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, mmap_mode="r", allow_pickle=False)}, str(path)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}, str(path)
    except Exception as exc:
        raise DataError(f"cannot read data file {path}: expected .npz or .npy ({exc})") from exc


def _pick_input_array(arrays: dict[str, np.ndarray], spec: InputSpec, single: bool) -> np.ndarray:
    if spec.name in arrays:
        return arrays[spec.name]
    if single:
        for key in ("x", "X", "x_test", "X_test"):
            if key in arrays:
                return arrays[key]
    raise DataError(
        f"data has no array for model input '{spec.name}' "
        f"(keys: {', '.join(sorted(arrays)) or 'none'}; use 'x' or the input's name)"
    )


def _pick_labels(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    for key in ("y", "Y", "y_test", "labels"):
        if key in arrays:
            return arrays[key]
    return None


def _check_finite(
    array: np.ndarray, name: str, chunk_bytes: int = 64 * 2**20, what: str = "data for input"
) -> None:
    """Scan in ~64 MB slices so a memory-mapped file is never read into RAM whole."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    chunk = max(1, chunk_bytes // max(1, array[:1].nbytes))
    for start in range(0, len(array), chunk):
        if not np.isfinite(array[start : start + chunk]).all():
            raise DataError(
                f"{what} '{name}' contains NaN or inf values "
                "(missing values are not imputed here: fill them in first)"
            )


def load_data(
    data: DataLike,
    specs: list[InputSpec],
    require_labels: bool = False,
    check_finite: bool = True,
) -> Dataset:
    """Read samples for a model and check they fit it: keys, count, shape, dtype, finiteness."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | os.PathLike) and Path(data).is_dir():
        from .images import load_image_folder  # streamed: decoded batch by batch

        return load_image_folder(data, specs, require_labels)
    arrays, source = _read_arrays(data)
    single = len(specs) == 1
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        array = _pick_input_array(arrays, spec, single)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise DataError(f"data for input '{spec.name}' is not numeric ({array.dtype})")
        if array.ndim == 0 or len(array) == 0:
            raise DataError(f"data for input '{spec.name}' is empty")
        _check_shape(array, spec)
        if check_finite:
            _check_finite(array, spec.name)
        inputs[spec.name] = array
    counts = {len(array) for array in inputs.values()}
    if len(counts) != 1:
        raise DataError(f"model inputs have different sample counts in the data: {counts}")
    labels = _pick_labels(arrays)
    if labels is not None and len(labels) != counts.pop():
        raise DataError(f"labels 'y' have {len(labels)} rows but inputs have a different count")
    if labels is not None and check_finite:
        _check_finite(labels, "y", what="labels")
    if require_labels and labels is None:
        raise DataError(f"labelled data needs a 'y' array: {source}")
    return Dataset(inputs, specs, labels, source)


def _check_shape(array: np.ndarray, spec: InputSpec) -> None:
    expected = spec.shape
    if not expected:
        return
    if array.ndim != len(expected):
        raise DataError(
            f"data for input '{spec.name}' has shape {tuple(array.shape)} but the model "
            f"expects {_shape_text(expected)}"
        )
    for got, want in zip(array.shape[1:], expected[1:]):
        if want is not None and got != want:
            raise DataError(
                f"data for input '{spec.name}' has shape {tuple(array.shape)} but the model "
                f"expects {_shape_text(expected)}"
            )
    if expected[0] is not None and expected[0] != array.shape[0]:
        # Fixed-batch models can only be fed whole batches of that size.
        if array.shape[0] % expected[0]:
            raise DataError(
                f"model input '{spec.name}' has a fixed batch of {expected[0]}; "
                f"the data's {array.shape[0]} samples are not a multiple of it"
            )


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
