"""Importance criteria behind one interface (see base.py), looked up by name."""

from __future__ import annotations

import inspect

from onnxprune.errors import ParameterError
from onnxprune.importance.apoz import APoZ
from onnxprune.importance.base import ChannelAccumulator, Importance
from onnxprune.importance.magnitude import L1Magnitude
from onnxprune.importance.ocnna import OCNNA, coefficient_of_variation, pca95_frobenius
from onnxprune.importance.odf2nna import ODF2NNA
from onnxprune.importance.random import RandomImportance

CRITERIA: dict[str, type[Importance]] = {
    cls.name: cls for cls in (OCNNA, ODF2NNA, L1Magnitude, RandomImportance, APoZ)
}


def get_criterion(name: str, **kwargs: object) -> Importance:
    """Build a criterion by its name; a bad name or option is a user error, not a crash."""
    key = name.strip().lower()
    cls = CRITERIA.get(key)
    if cls is None:
        valid = ", ".join(sorted(CRITERIA))
        raise ParameterError(f"unknown importance criterion {name!r}; valid: {valid}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ParameterError(f"bad option for criterion {key!r}: {exc}") from None
    return cls(**kwargs)


__all__ = [
    "APoZ",
    "CRITERIA",
    "ChannelAccumulator",
    "Importance",
    "L1Magnitude",
    "OCNNA",
    "ODF2NNA",
    "RandomImportance",
    "coefficient_of_variation",
    "get_criterion",
    "pca95_frobenius",
]
