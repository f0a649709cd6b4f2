"""Stage `score`: one importance value per channel of every source in the chosen groups."""

from __future__ import annotations

import numpy as np

from .analyze import Analysis
from .graph.groups import ChannelGroup
from .graph.rules.producers import output_major_weight
from .importance.base import ChannelAccumulator, Importance
from .io import Dataset
from .observe import observe


def score_sources(
    analysis: Analysis,
    groups: list[ChannelGroup],
    criterion: Importance,
    dataset: Dataset | None,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Source name -> per-channel scores, from one streamed pass over ``dataset``."""
    sources = [source for group in groups for source in group.sources]
    if not criterion.needs_activations:
        return {s.name: criterion.weight_scores(output_major_weight(s.node)) for s in sources}
    accumulators: dict[str, ChannelAccumulator] = {}
    sinks = {}
    for source in sources:
        accumulator = criterion.accumulator(source.size)
        accumulators[source.name] = accumulator
        axis = analysis.cg.layouts[source.watched].axis
        sinks[source.watched] = (axis, [accumulator])
    observe(analysis.model, dataset, sinks, batch_size, device,
            description=f"scoring {len(sources)} layers ({criterion.name})")
    return {name: accumulator.scores() for name, accumulator in accumulators.items()}
