"""ODF2NNA end to end: a trained dense network -> its useful units only.

analyze -> observe (one pass: every unit's std and mean over the data, in the ORIGINAL
model) -> select (std > epsilon) -> rewrite (removed units' means folded into the next
layer's bias) -> bridge (hidden layers left without units are removed and their
neighbours joined by least squares) -> verify -> report.

``odf2nna_from_dataset`` (Algorithm 1 of the paper, building and training the starting
MLP first) lives in ``odf2nna_dataset.py`` and calls ``odf2nna_sweep`` for the pruning.
A sweep over epsilons observes the model once and prunes it once per epsilon.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .. import progress
from ..analyze import Analysis
from ..errors import DataError, ModelError, ParameterError
from ..graph.bridge import BridgeSite, bridge_all, find_site
from ..graph.groups import ChannelGroup
from ..graph.rewrite import Plan
from ..importance import ODF2NNA
from ..io import DataLike, Dataset, input_specs, load_data, load_model
from ..pipeline import (
    PruneResult,
    apply_masks,
    before_after,
    first_feed,
    frozen_hint,
    prepare,
)
from ..recovery import DISTILL_LR, DistillOptions, check_distill, recover
from ..report import build_report, stamp_provenance
from ..score import score_sources
from ..select import check_epsilon, group_scores, keep_nonempty, threshold_mask
from ..verify import verify


def dense_groups(analysis: Analysis) -> list[ChannelGroup]:
    """Prunable groups made only of dense units (Gemm/MatMul): ODF2NNA's hidden layers."""
    return [g for g in analysis.prunable() if all(s.kind == "dense" for s in g.sources)]


@dataclass
class Observed:
    """What one observation pass learned: every hidden unit's std and mean over the data.

    Any number of epsilons can then be applied without running the model again.
    """

    model_arg: object
    analysis: Analysis
    dataset: Dataset
    eval_set: Dataset | None
    groups: list[ChannelGroup]
    scores: dict[int, np.ndarray]  # group index -> per-unit std
    means: dict[str, np.ndarray] | None  # consumer input -> per-unit mean (compensation)
    timings: dict[str, float]


def observe_units(
    model: str | os.PathLike | onnx.ModelProto,
    data: DataLike | None,
    *,
    eval_data: DataLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    compensate: bool = True,
) -> Observed:
    """Load, analyze and run the model once over ``data``, measuring every hidden unit."""
    if data is None:
        raise DataError("ODF2NNA needs data: pass samples (--data) to measure each unit's std")
    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    original = load_model(model)
    eval_set = None
    if eval_data is not None:  # checked before any work starts
        eval_set = load_data(eval_data, input_specs(original), require_labels=True)
    _, analysis, dataset = prepare(original, data)
    assert dataset is not None
    groups = dense_groups(analysis)
    if not groups:
        raise ModelError("the model has no prunable dense layer" + frozen_hint(analysis))
    analyze_s = time.perf_counter() - start
    start = time.perf_counter()
    source_scores, means = score_sources(
        analysis, groups, ODF2NNA(), dataset, batch_size, device, compensate=compensate
    )
    scores = {g.index: group_scores(g, source_scores) for g in groups}
    timings = {"analyze_s": analyze_s, "score_s": time.perf_counter() - start}
    return Observed(
        model, analysis, dataset, eval_set, groups, scores, means if compensate else None, timings
    )


def odf2nna(
    model: str | os.PathLike | onnx.ModelProto,
    epsilon: float,
    data: DataLike | None,
    *,
    eval_data: DataLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    compensate: bool = True,
    bridge: bool = True,
    reconstruct: bool = False,
    distill: int = 0,
    distill_lr: float = DISTILL_LR,
    seed: int = 0,
) -> PruneResult:
    """Keep the hidden dense units whose output std over ``data`` exceeds ``epsilon``.

    ``data`` is the paper's evalData (array, .npz/.npy path or mapping input -> array);
    ``eval_data`` (with labels ``y``) adds accuracy or MSE before and after. Each removed
    unit is replaced by its mean (folded into the next layer's bias, ``compensate``); a
    hidden layer losing every unit is removed and bridged by a least-squares fit
    (``bridge``; without it, or where the graph cannot be bridged, the layer keeps its
    most variable unit). The output layer is never pruned. ``reconstruct`` refits the
    layers that lost inputs by least squares on ``data`` (see ``onnxprune.reconstruct``);
    ``distill`` > 0 then trains the pruned model that many epochs on ``data`` towards the
    original's layer outputs, without labels (see ``ocnna``).
    """
    (result,) = odf2nna_sweep(
        model,
        [epsilon],
        data,
        eval_data=eval_data,
        batch_size=batch_size,
        device=device,
        compensate=compensate,
        bridge=bridge,
        reconstruct=reconstruct,
        distill=distill,
        distill_lr=distill_lr,
        seed=seed,
    )
    return result


def odf2nna_sweep(
    model: str | os.PathLike | onnx.ModelProto,
    epsilons: Sequence[float],
    data: DataLike | None,
    **options,
) -> list[PruneResult]:
    """``odf2nna`` for several epsilons from ONE observation pass (same options)."""
    epsilons = [check_epsilon(e) for e in epsilons]
    prune_options = {
        "bridge": options.pop("bridge", True),
        "reconstruct": options.pop("reconstruct", False),
        "batch_size": options.get("batch_size", 64),
        "device": options.get("device", "cpu"),
        "distill": options.pop("distill", 0),
        "distill_lr": options.pop("distill_lr", DISTILL_LR),
        "seed": options.pop("seed", 0),
    }
    check_distill(prune_options["distill"], prune_options["distill_lr"], data)
    observed = observe_units(model, data, **options)
    return [prune_observed(observed, e, **prune_options) for e in epsilons]


def prune_observed(
    observed: Observed,
    epsilon: float,
    *,
    bridge: bool = True,
    reconstruct: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    distill: int = 0,
    distill_lr: float = DISTILL_LR,
    seed: int = 0,
) -> PruneResult:
    """Select (std > epsilon), rewrite with mean folding, bridge, recover, (distill,)
    verify, report."""
    epsilon = check_epsilon(epsilon)
    analysis, scores = observed.analysis, observed.scores
    masks = {i: threshold_mask(s, epsilon, allow_empty=True) for i, s in scores.items()}
    sites, not_bridged = _plan_bridges(analysis, observed.groups, masks, bridge)
    for index, reason in not_bridged.items():
        masks[index] = threshold_mask(scores[index], epsilon)  # keeps the most variable unit
        progress.info(f"note: {analysis.groups[index].name} keeps one unit ({reason})")
    kept_whole = {i: (m if m.any() else np.ones_like(m)) for i, m in masks.items()}
    keep_nonempty(analysis.cg, analysis.groups, kept_whole, scores)
    masks = {i: (kept_whole[i] if m.any() else m) for i, m in masks.items()}
    plan = Plan(analysis.cg, analysis.groups, kept_whole)
    tensors = analysis.cg.graph.tensors()
    for site in sites:  # a bridge feeds the next layer's kept units only
        site.target_keep = plan.keep(tensors[site.target])

    start = time.perf_counter()
    dataset = observed.dataset
    pruned = apply_masks(analysis, kept_whole, observed.means)
    pruned, removed = bridge_all(pruned, analysis.model, sites, dataset, batch_size, device)
    recovery = recover(
        analysis,
        pruned,
        kept_whole,
        dataset,
        observed.means or {},
        refit=reconstruct,
        batch_size=batch_size,
        device=device,
        distill=DistillOptions(distill, distill_lr, batch_size, seed, device),
    )
    pruned = recovery.model
    feed = first_feed(dataset)
    verify(pruned, analysis.model, feed)
    rewrite_verify = time.perf_counter() - start - recovery.seconds
    timings = {**observed.timings, "rewrite_verify_s": rewrite_verify, **recovery.timings}

    parameters = {
        "epsilon": epsilon,
        "compensate": observed.means is not None,
        "bridge": bridge,
        "reconstruct": reconstruct,
        "distill": distill,
    }
    model_arg = observed.model_arg
    report = build_report("odf2nna", parameters, model_arg, analysis, pruned, masks, scores, feed)
    report["layers_removed"] = removed
    report.update(recovery.report())
    report["layers_not_bridged"] = [
        {"layer": analysis.groups[i].name, "reason": r} for i, r in not_bridged.items()
    ]
    report["unit_std"] = _std_summary(observed.groups, scores, masks)
    if observed.eval_set is not None:
        progress.info("evaluating before/after")
        report.update(before_after(analysis.model, pruned, observed.eval_set, batch_size))
    report["samples"] = len(dataset)
    report["timings"] = timings
    stamp_provenance(pruned, report, model_arg)
    return PruneResult(pruned, report, kept_whole)


def _plan_bridges(
    analysis: Analysis,
    groups: list[ChannelGroup],
    masks: dict[int, np.ndarray],
    bridge: bool,
) -> tuple[list[BridgeSite], dict[int, str]]:
    """Bridge sites for the emptied layers (graph order), and the groups that cannot be.

    A layer that cannot be bridged stays (with one unit), which changes the runs of
    consecutive emptied layers around it, so planning repeats until nothing fails.
    """
    emptied = [g for g in groups if not masks[g.index].any()]
    if not bridge:
        return [], {g.index: "bridging is off" for g in emptied}
    failed = {
        g.index: "its units are coupled to another layer's" for g in emptied if len(g.sources) != 1
    }
    watched = {s.name: s.watched for s in analysis.cg.sources}
    order = {node.name: i for i, node in enumerate(analysis.cg.graph.nodes)}
    while True:
        names = {g.sources[0].name: g.index for g in emptied if g.index not in failed}
        sites: list[BridgeSite] = []
        covered: set[str] = set()
        for name in sorted(names, key=order.__getitem__):
            if name in covered:
                continue
            site = find_site(analysis.cg.graph, name, watched, set(names), analysis.cg.shapes)
            if isinstance(site, str):
                failed[names[name]] = site
                break
            covered.update(site.layers)
            sites.append(site)
        else:
            return sites, failed


def _std_summary(
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    masks: dict[int, np.ndarray],
) -> list[dict]:
    """Per hidden layer: min / median / max unit std and how many exceed epsilon."""
    rows = []
    for group in groups:
        std = scores[group.index]
        rows.append(
            {
                "layer": group.name,
                "units": group.size,
                "kept": int(masks[group.index].sum()),
                "std_min": float(std.min()),
                "std_median": float(np.median(std)),
                "std_max": float(std.max()),
            }
        )
    return rows
