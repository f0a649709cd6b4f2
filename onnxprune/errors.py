"""User-facing errors: the CLI turns each into one line and a non-zero exit code."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error a user can cause and fix (bad model, data, option)."""

    exit_code = 1


class ModelError(OnnxPruneError):
    """The model file is missing, corrupt, not ONNX, or has nothing to prune."""

    exit_code = 3


class DataError(OnnxPruneError):
    """The data file is missing, empty, malformed, has NaN/inf, or does not fit the model."""

    exit_code = 4


class ParameterError(OnnxPruneError):
    """An option is out of its range (k, epsilon, batch size, ...)."""

    exit_code = 2


class OutputError(OnnxPruneError):
    """An output cannot be written (exists without --force, not writable, disk full)."""

    exit_code = 5
