"""`inspect`: what a user reads before pruning: groups, prunability and why, per-layer cost."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .graph.rules.base import constant
from .io import DataLike
from .metrics import count_params, layer_macs
from .pipeline import first_feed, nothing_to_prune, prepare, zeros_feed


def _node_params(node) -> int:
    return sum(
        int(np.prod(v.shape)) for v in (constant(t) for t in node.inputs[1:]) if v is not None
    )


def inspect(model: str | os.PathLike | onnx.ModelProto, data: DataLike | None = None) -> dict:
    """Channel groups of ``model`` with sizes, prunability, reasons, params and MACs."""
    _, analysis, dataset = prepare(model, data)
    feed = first_feed(dataset) if dataset is not None else zeros_feed(analysis)
    macs = layer_macs(analysis.model, feed)
    groups = []
    conv_total = conv_prunable = 0
    for group in analysis.groups:
        members = []
        for source in group.sources:
            params = _node_params(source.node)
            if source.kind == "conv":
                conv_total += params
                conv_prunable += params if group.prunable else 0
            members.append(
                {
                    "name": source.name,
                    "op": source.node.op,
                    "channels": source.size,
                    "params": params,
                    "macs": macs.get(source.name, 0),
                    "flops": 2 * macs.get(source.name, 0),
                    "watched": source.watched,
                }
            )
        groups.append(
            {
                "group": group.index,
                "kind": group.kind,
                "channels": group.size,
                "prunable": group.prunable,
                "reason": None if group.prunable else (group.frozen_reason or "single channel"),
                "equal_groups": group.equal_groups,
                "layers": members,
            }
        )
    return {
        "model": str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>",
        "params": count_params(analysis.model),
        "macs": int(sum(macs.values())),
        "flops": 2 * int(sum(macs.values())),
        "groups": groups,
        "prunable_groups": sum(1 for g in groups if g["prunable"]),
        # why nothing can be pruned (no layer, already quantized, every group frozen)
        "nothing_prunable": None if analysis.prunable() else nothing_to_prune(analysis),
        "conv_params_prunable_ratio": conv_prunable / conv_total if conv_total else 0.0,
    }


def _prunable_text(group: dict) -> str:
    if not group["prunable"]:
        return f"no: {group['reason']}"
    blocks = group.get("equal_groups", 1)
    return "yes" if blocks == 1 else f"yes, equally in {blocks} conv groups"


def print_inspection(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"channel groups of {info['model']}")
    for column in ("group", "layers", "kind", "channels", "params", "FLOPs", "prunable / why not"):
        table.add_column(column)
    for group in info["groups"]:
        names = "\n".join(layer["name"] for layer in group["layers"])
        table.add_row(
            str(group["group"]),
            names,
            group["kind"],
            str(group["channels"]),
            "\n".join(f"{m['params']:,}" for m in group["layers"]),  # one line per layer
            "\n".join(f"{m['flops']:,}" for m in group["layers"]),
            _prunable_text(group),
        )
    console = Console()
    console.print(table)
    console.print(
        f"params {info['params']:,}  FLOPs {info['flops']:,}  prunable groups "
        f"{info['prunable_groups']}/{len(info['groups'])}  conv params in prunable "
        f"groups {100 * info['conv_params_prunable_ratio']:.1f}%"
    )
    if info.get("nothing_prunable"):
        console.print(f"nothing to prune: {info['nothing_prunable']}")
