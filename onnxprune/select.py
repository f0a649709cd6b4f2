"""Stage `select`: turn per-channel scores into a keep mask per channel group."""

from __future__ import annotations

import math

import numpy as np

from .errors import ParameterError
from .graph.channel_graph import ChannelGraph
from .graph.groups import ChannelGroup


def check_k(k: float) -> float:
    if not (isinstance(k, int | float) and math.isfinite(k) and 0 <= k < 100):
        raise ParameterError(f"k must be a percentile in [0, 100), got {k}")
    return float(k)


def check_epsilon(epsilon: float) -> float:
    """ODF2NNA's tolerance: a finite epsilon >= 0 (0 removes only exactly constant units)."""
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon >= 0):
        raise ParameterError(f"epsilon must be a finite number >= 0, got {epsilon}")
    return float(epsilon)


def group_scores(group: ChannelGroup, source_scores: dict[str, np.ndarray]) -> np.ndarray:
    """One score per group channel: the mean over the member sources that carry it."""
    total = np.zeros(group.size)
    count = np.zeros(group.size)
    for source in group.sources:
        scores = source_scores.get(source.name)
        if scores is None:
            continue
        index = group.channel_of[source.name]
        np.add.at(total, index, scores)
        np.add.at(count, index, 1)
    return np.divide(total, count, out=np.zeros(group.size), where=count > 0)


def percentile_mask(
    scores: np.ndarray, k: float, round_to: int = 1, blocks: np.ndarray | None = None
) -> np.ndarray:
    """Drop the floor(k% * M) lowest-scored channels, keep at least one.

    Ties break by channel index (a stable sort), so the same scores give the same mask.
    ``round_to`` rounds the kept count up to a multiple (fast kernels like multiples of 8).
    With ``blocks`` (a grouped conv's (G, M / G) channels) every block drops its own
    floor(k% * M / G), so all groups keep equally many.
    """
    if blocks is not None:
        mask = np.ones(scores.shape[0], dtype=bool)
        for row in blocks:
            mask[row] = percentile_mask(scores[row], k, max(1, round_to // len(blocks)))
        return mask
    size = scores.shape[0]
    drop = min(math.floor(k * size / 100 + 1e-9), size - 1)
    if round_to > 1:
        kept = min(size, -(-(size - drop) // round_to) * round_to)
        drop = size - kept
    mask = np.ones(size, dtype=bool)
    mask[np.argsort(scores, kind="stable")[:drop]] = False
    return mask


def threshold_mask(scores: np.ndarray, epsilon: float, allow_empty: bool = False) -> np.ndarray:
    """Keep channels scoring above ``epsilon`` (ODF2NNA: std > epsilon)."""
    mask = scores > epsilon
    if not mask.any() and not allow_empty:
        mask[int(np.argmax(scores))] = True
    return mask


def keep_nonempty(
    cg: ChannelGraph,
    groups: list[ChannelGroup],
    masks: dict[int, np.ndarray],
    scores: dict[int, np.ndarray],
) -> None:
    """Make selected masks realisable, after any selection: Split/Slice outputs must keep
    a channel (restore the best one where none is left), and the blocks of a grouped conv
    must keep equally many (``balance_blocks``).

    Channels of groups without a mask are all kept, so only sets lying entirely in
    masked groups can end up empty.
    """
    roots = cg.roots()
    place = {
        root: (group.index, channel)
        for group in groups
        if group.index in masks
        for channel, root in enumerate(group.roots.tolist())
    }
    for atoms in cg.nonempty:
        unique = np.unique(roots[atoms]).tolist()
        if not all(root in place for root in unique):
            continue  # some channel here belongs to an unmasked group: it stays
        channels = [place[root] for root in unique]
        if any(masks[g][c] for g, c in channels):
            continue
        g, c = max(channels, key=lambda gc: scores[gc[0]][gc[1]])
        masks[g][c] = True
    balance_blocks(groups, masks, scores)


def balance_blocks(
    groups: list[ChannelGroup], masks: dict[int, np.ndarray], scores: dict[int, np.ndarray]
) -> None:
    """Where a grouped conv reads a group, give every block as many kept channels as the
    fullest one has (its best-scored ones): a threshold or a restored channel can leave
    blocks uneven, and a grouped conv needs them even."""
    for group in groups:
        mask = masks.get(group.index)
        if group.blocks is None or mask is None:
            continue
        want = max(1, max(int(mask[row].sum()) for row in group.blocks))
        for row in group.blocks:
            if mask[row].sum() < want:
                best = row[np.argsort(-scores[group.index][row], kind="stable")]
                extra = [c for c in best.tolist() if not mask[c]]
                mask[extra[: want - int(mask[row].sum())]] = True
