"""The keep masks a pruning run chose (``PruneResult.masks``), as a plan for rebuilding
the Keras model. The rebuilt Keras model is then checked against the pruned ONNX model's
outputs, so a mismatch is a loud error, never a silently different model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.rewrite import Plan
from ..methods.ocnna import Scored
from ..methods.odf2nna import Observed


def refuse_bridged(report: dict) -> None:
    """A bridged (removed) hidden layer has no Keras counterpart to rebuild: that is an
    error suggesting ``--no-bridge``, which keeps the layer's most variable unit instead."""
    removed = report.get("layers_removed") or []
    if removed:
        names = ", ".join(n for entry in removed for n in entry["layers"])
        raise ModelError(
            f"ODF2NNA removed hidden layer(s) {names}; the Keras route cannot rebuild a "
            "bridged model: rerun with --no-bridge"
        )


def plan_for(scored: Scored | Observed, masks: dict[int, np.ndarray]) -> Plan:
    """The rewrite plan of those masks: ``plan.keep(tensor)`` is any tensor's channel mask."""
    analysis = scored.analysis
    return Plan(analysis.cg, analysis.groups, masks)
