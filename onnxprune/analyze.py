"""Stage `analyze`: normalise the model, find its channel groups, choose what to watch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import ParameterError
from .graph.channel_graph import ChannelGraph, Source
from .graph.groups import ChannelGroup, build_groups
from .graph.rules import rule_for
from .graph.shapes import probe_feed, probe_shapes
from .io import InputSpec, input_specs
from .normalize import normalize


@dataclass
class Analysis:
    """A normalised model and everything known about its channels."""

    model: onnx.ModelProto
    cg: ChannelGraph
    groups: list[ChannelGroup]
    specs: list[InputSpec]

    def group_of(self, source_name: str) -> ChannelGroup:
        for group in self.groups:
            if source_name in group.channel_of:
                return group
        raise KeyError(f"no channel source named '{source_name}'")

    def prunable(self, convs_only: bool = False) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable and (not convs_only or g.kind == "conv")]

    def keep_layers(self, patterns: Sequence[str]) -> None:
        """Freeze every group with a layer named by one of ``patterns`` (shell-style, as
        ``onnxprune inspect`` lists the names): the user's sensitive layers stay whole."""
        for pattern in patterns:
            matched = [
                g for g in self.groups if any(fnmatchcase(s.name, pattern) for s in g.sources)
            ]
            if not matched:
                raise ParameterError(
                    f"--keep '{pattern}' names no layer (`onnxprune inspect MODEL` lists them)"
                )
            for group in matched:
                group.frozen_reason = group.frozen_reason or f"kept by --keep '{pattern}'"

    def frozen(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def watched_axes(self, groups: list[ChannelGroup]) -> dict[str, int]:
        """Tensor name -> channel axis, for the sources of ``groups``."""
        return {
            source.watched: self.cg.layouts[source.watched].axis
            for group in groups
            for source in group.sources
        }


def analyze(model: onnx.ModelProto, sample: dict[str, np.ndarray] | None = None) -> Analysis:
    """Normalise ``model`` and run every node's channel rule over it, in topological order."""
    normalized = normalize(model)
    specs = input_specs(normalized)
    shapes = probe_shapes(normalized, probe_feed(specs, sample))
    graph = gs.import_onnx(normalized)
    cg = ChannelGraph(graph, shapes)
    for node in graph.nodes:
        rule_for(node.op, node.domain or "").analyze(node, cg)
    for output in graph.outputs:
        cg.freeze_tensor(output, f"carried by model output '{output.name}'")
    for source in cg.sources:
        source.watched = _watched_tensor(source, cg).name
    return Analysis(normalized, cg, build_groups(cg), specs)


def _watched_tensor(source: Source, cg: ChannelGraph) -> gs.Tensor:
    """Follow BN/activation/bias nodes: OCNNA scores what the rest of the net consumes."""
    outputs = {t.name for t in cg.graph.outputs}
    tensor = source.node.outputs[0]
    while len(tensor.outputs) == 1 and tensor.name not in outputs:
        node = tensor.outputs[0]
        nxt = node.outputs[0]
        layout = cg.layout(tensor)
        if not rule_for(node.op, node.domain or "").is_channelwise(node, cg):
            break
        if layout is None or not layout.same_as(cg.layout(nxt)):
            break
        tensor = nxt
    return tensor
