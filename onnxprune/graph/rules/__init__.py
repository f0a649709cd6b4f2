"""Op type -> channel rule. Importing this package registers every rule."""

from . import (  # noqa: F401
    barrier,
    elementwise,
    indexing,
    passthrough,
    producers,
    recurrent,
    reduce,
    reshape,
)
from .barrier import BARRIER
from .base import RULES, Rule


def rule_for(op_type: str, domain: str = "") -> Rule:
    """The rule for an op; custom domains and unknown ops are barriers."""
    if domain not in ("", "ai.onnx"):
        return BARRIER
    return RULES.get(op_type, BARRIER)


__all__ = ["RULES", "Rule", "rule_for"]
