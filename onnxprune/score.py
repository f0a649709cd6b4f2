"""Stage `score`: one importance value per channel of every source in the chosen groups,
and (for mean compensation) the mean of every tensor a consumer reads, in one pass."""

from __future__ import annotations

import numpy as np

from .analyze import Analysis
from .graph.groups import ChannelGroup
from .graph.rules import rule_for
from .graph.rules.producers import output_major_weight
from .importance.base import ChannelAccumulator, Importance
from .importance.ocnna import for_run
from .importance.odf2nna import MomentsAccumulator
from .io import Dataset
from .observe import observe
from .shards import check_workers, observe_sharded


def consumer_inputs(analysis: Analysis, groups: list[ChannelGroup]) -> dict[str, int]:
    """Tensor -> channel axis, for consumers reading channels that ``groups`` may remove."""
    cg = analysis.cg
    roots = cg.roots()
    prunable_roots = np.concatenate([g.roots for g in groups]) if groups else np.empty(0)
    tensors = {}
    for node in cg.graph.nodes:
        if not rule_for(node.op, node.domain or "").compensates:
            continue
        layout = cg.layout(node.inputs[0])
        if layout is not None and np.isin(roots[layout.atoms], prunable_roots).any():
            tensors[node.inputs[0].name] = layout.axis
    return tensors


def score_sources(
    analysis: Analysis,
    groups: list[ChannelGroup],
    criterion: Importance,
    dataset: Dataset | None,
    batch_size: int = 64,
    device: str = "cpu",
    compensate: bool = False,
    memory_budget: float | None = None,
    workers: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(source name -> per-channel scores, consumer input -> per-position means).

    ``memory_budget`` (MB) splits observation into passes over truncated graphs;
    ``workers`` > 1 splits D_var over that many processes (shards.py: same results).
    """
    check_workers(workers, device)
    sources = [source for group in groups for source in group.sources]
    samples = 0 if dataset is None else len(dataset)
    criterion = for_run(criterion, device, samples, sum(s.size for s in sources))
    sinks: dict[str, tuple[int, list[ChannelAccumulator]]] = {}
    accumulators: dict[str, ChannelAccumulator] = {}
    if criterion.needs_activations:
        for source in sources:
            accumulator = criterion.accumulator(source.size)
            accumulators[source.name] = accumulator
            axis = analysis.cg.layouts[source.watched].axis
            sinks.setdefault(source.watched, (axis, []))[1].append(accumulator)
    moments: dict[str, MomentsAccumulator] = {}
    if compensate and dataset is not None:
        for name, axis in consumer_inputs(analysis, groups).items():
            moments[name] = MomentsAccumulator(analysis.cg.layouts[name].size)
            sinks.setdefault(name, (axis, []))[1].append(moments[name])
    description = f"scoring {len(sources)} layers ({criterion.name})"
    if workers > 1 and dataset is not None:
        observe_sharded(
            analysis.model, dataset, sinks, batch_size, workers, description, memory_budget
        )
    else:
        observe(analysis.model, dataset, sinks, batch_size, device, description, memory_budget)
    if criterion.needs_activations:
        scores = {name: accumulator.scores() for name, accumulator in accumulators.items()}
    else:
        scores = {s.name: criterion.weight_scores(output_major_weight(s.node)) for s in sources}
    return scores, {name: moment.mean for name, moment in moments.items()}
