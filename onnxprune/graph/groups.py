"""ChannelGroup: the sources whose channels must shrink together, and how they are found."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .channel_graph import ChannelGraph, Source


@dataclass
class ChannelGroup:
    """Coupled channels of one or more sources (e.g. every conv feeding a residual sum).

    Channel i of the group is one atom-component: removing it removes, in every member
    source, the channels mapped to i by ``channel_of``.
    """

    index: int
    sources: list[Source]
    roots: np.ndarray  # union-find root atom of each group channel
    channel_of: dict[str, np.ndarray] = field(default_factory=dict)  # source -> channel index
    frozen_reason: str | None = None
    # (G, n) group channels whose rows must keep equally many (read by a grouped conv)
    blocks: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.roots.shape[0])

    @property
    def kind(self) -> str:
        return "conv" if any(s.kind == "conv" for s in self.sources) else "dense"

    @property
    def equal_groups(self) -> int:
        """How many blocks a grouped conv makes it lose channels equally from (1: none)."""
        return 1 if self.blocks is None else len(self.blocks)

    @property
    def prunable(self) -> bool:
        return self.frozen_reason is None and self.size > 1

    @property
    def name(self) -> str:
        names = [s.name for s in self.sources]
        return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} coupled)"


def build_groups(cg: ChannelGraph) -> list[ChannelGroup]:
    """Sources sharing any atom component form one group; frozen atoms freeze the group."""
    roots = cg.roots()
    owner: dict[int, int] = {}
    parent = list(range(len(cg.sources)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for index, source in enumerate(cg.sources):
        for root in np.unique(roots[source.atoms]).tolist():
            other = owner.setdefault(root, index)
            a, b = find(other), find(index)
            if a != b:
                parent[max(a, b)] = min(a, b)

    members: dict[int, list[Source]] = {}
    for index, source in enumerate(cg.sources):
        members.setdefault(find(index), []).append(source)

    frozen_roots: dict[int, str] = {}
    for atom, reason in cg.frozen.items():
        frozen_roots.setdefault(int(roots[atom]), reason)

    groups = []
    for sources in members.values():
        ordered = np.concatenate([roots[s.atoms] for s in sources])
        _, first = np.unique(ordered, return_index=True)
        group_roots = ordered[np.sort(first)]
        position = {int(r): i for i, r in enumerate(group_roots.tolist())}
        group = ChannelGroup(len(groups), sources, group_roots)
        for source in sources:
            group.channel_of[source.name] = np.array(
                [position[int(r)] for r in roots[source.atoms].tolist()], dtype=np.int64
            )
        reasons = [frozen_roots[r] for r in group_roots.tolist() if r in frozen_roots]
        group.frozen_reason = reasons[0] if reasons else None
        groups.append(group)
    _assign_blocks(cg, roots, groups)
    return groups


def _assign_blocks(cg: ChannelGraph, roots: np.ndarray, groups: list[ChannelGroup]) -> None:
    """Give each group the equal-count rows its grouped convs ask for. A group that a
    grouped conv splits only partly, or that two grouped convs split differently, is
    frozen: no selection could keep every one of them a grouped conv."""
    where = {
        int(root): (group, channel)
        for group in groups
        for channel, root in enumerate(group.roots.tolist())
    }
    for atoms, node in cg.blocks:
        places = [[where[int(r)] for r in roots[row].tolist()] for row in atoms]
        owners = {id(g): g for row in places for g, _ in row}
        group = places[0][0][0]
        channels = np.sort(np.array([[c for _, c in row] for row in places]), axis=1)
        channels = channels[np.argsort(channels[:, 0], kind="stable")]
        covers = np.array_equal(np.sort(channels.reshape(-1)), np.arange(group.size))
        if len(owners) != 1 or not covers:
            reason = f"grouped Conv '{node}' (group={len(atoms)}) splits coupled channels"
        elif group.blocks is None or _refines(channels, group.blocks):
            group.blocks = channels
            continue
        elif _refines(group.blocks, channels):
            continue
        else:
            reason = f"grouped Conv '{node}' splits its channels unlike another grouped Conv"
        for owner in owners.values():
            owner.frozen_reason = owner.frozen_reason or reason


def _refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every row of ``coarse`` is a union of rows of ``fine``: equal counts per fine row
    then give equal counts per coarse row (group=4 and group=2 convs reading one tensor)."""
    if len(fine) % len(coarse):
        return False
    row_of = {int(c): i for i, row in enumerate(coarse) for c in row.tolist()}
    return all(len({row_of[int(c)] for c in row.tolist()}) == 1 for row in fine)
