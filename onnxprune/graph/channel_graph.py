"""The analysis state: atoms, their producers, layouts of tensors, unions and barriers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .layout import Layout


@dataclass
class Source:
    """A node that creates channels: a conv's filters or a dense layer's units."""

    node: gs.Node
    kind: str  # "conv" or "dense"
    size: int
    first_atom: int
    watched: str = ""  # tensor the rest of the net consumes (after BN / activation)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def atoms(self) -> np.ndarray:
        return np.arange(self.first_atom, self.first_atom + self.size, dtype=np.int64)


@dataclass
class ChannelGraph:
    """What the rules learn about a graph: every channel atom and how atoms are coupled."""

    graph: gs.Graph
    shapes: dict[str, tuple[int, ...]]
    layouts: dict[str, Layout] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # atom -> first reason
    nonempty: list[np.ndarray] = field(default_factory=list)  # atom sets that keep >= 1
    # (G, n) atom arrays whose G rows must keep equally many channels (grouped convs), and
    # the node that asks for it
    blocks: list[tuple[np.ndarray, str]] = field(default_factory=list)

    # ---------------------------------------------------------------- atoms

    def new_source(self, node: gs.Node, kind: str, size: int) -> Layout:
        first = len(self.parent)
        self.parent.extend(range(first, first + size))
        self.sources.append(Source(node, kind, size, first))
        return Layout(1, np.arange(first, first + size, dtype=np.int64))

    def new_atoms(self, size: int, reason: str) -> np.ndarray:
        """Frozen atoms for channels no source creates (a model input joined by Concat)."""
        first = len(self.parent)
        self.parent.extend(range(first, first + size))
        atoms = np.arange(first, first + size, dtype=np.int64)
        self.freeze(atoms, reason)
        return atoms

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, left: np.ndarray, right: np.ndarray) -> None:
        """Tie channel i of ``left`` to channel i of ``right`` (residual Add, SE Mul)."""
        for a, b in zip(left.tolist(), right.tolist()):
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)

    def equal_blocks(self, atoms: np.ndarray, groups: int, node: str) -> None:
        """``atoms`` split into ``groups`` equal rows must keep equally many channels per
        row: a grouped conv stays a grouped conv only with equal group sizes."""
        self.blocks.append((atoms.reshape(groups, -1), node))

    # ---------------------------------------------------------------- layouts

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        if isinstance(tensor, gs.Constant) or not tensor.name:
            return None
        return self.layouts.get(tensor.name)

    def set_layout(self, tensor: gs.Tensor, layout: Layout | None) -> None:
        if layout is not None:
            self.layouts[tensor.name] = layout

    def shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    # ---------------------------------------------------------------- barriers

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for atom in atoms.tolist():
            self.frozen.setdefault(atom, reason)

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        """A barrier: every channel this node reads stays as it is."""
        for tensor in node.inputs:
            layout = self.layout(tensor)
            if layout is not None:
                self.freeze(layout.atoms, reason)

    def freeze_tensor(self, tensor: gs.Tensor, reason: str) -> None:
        layout = self.layout(tensor)
        if layout is not None:
            self.freeze(layout.atoms, reason)
