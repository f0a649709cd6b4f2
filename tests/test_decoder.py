"""Upsampling decoders (U-Net style): ConvTranspose creates channels (weight axis 1) and
reads them on axis 0; Resize, Tile and Expand (nearest upsampling as exporters write it)
pass them through; a skip Concat joins encoder and decoder channels; a per-pixel output
map keeps its own channels."""

from __future__ import annotations

import numpy as np
import pytest
from checks import analysis_of, dead_exact, kept_sizes, prune_checked
from fuzz_graphs import Net, Tensor, producer


def unet(upsample: str = "convtranspose"):
    """enc conv -> pool -> conv -> up (ConvTranspose or Resize + conv) -> concat skip ->
    conv -> 1x1 conv to 3 classes per pixel. Returns the model and the layer names."""
    net, x = Net.start(3, 8)
    skip = net.act(net.conv(x, 6, 3, 1, bias=True), "Relu")
    (pooled,) = net.node("MaxPool", [skip.name], kernel_shape=[2, 2], strides=[2, 2])
    deep = net.act(net.conv(Tensor(pooled, 6, 4, 4), 8, 3, 1, bias=True), "Relu")
    if upsample == "convtranspose":
        weight = net.const("wt", net.weight(8, 4, 2, 2))
        (up,) = net.node("ConvTranspose", [deep.name, weight], kernel_shape=[2, 2], strides=[2, 2])
        up_source = up.rsplit("_out", 1)[0]
    else:
        resized = upsampled(net, deep.name, upsample)
        conv = net.conv(Tensor(resized, 8, 8, 8), 4, 3, 1, bias=True)
        up, up_source = conv.name, producer(conv)
    (joined,) = net.node("Concat", [skip.name, up], axis=1)
    fused = net.act(net.conv(Tensor(joined, 10, 8, 8), 6, 3, 1, bias=True), "Relu")
    logits = net.conv(fused, 3, 1, 1, bias=True)
    model = net.model([(logits.name, ["N", 3, 8, 8])])
    return model, up_source


def upsampled(net: Net, x: str, how: str) -> str:
    """(N, 8, 4, 4) -> (N, 8, 8, 8): Resize; Tile (repeats the map 2 x 2); nearest
    upsampling through Reshape -> Expand -> Reshape, the Expand shape giving the channel
    axis as 1 ("expand") or as the channel count 8 ("expand_named", rewritten on pruning)."""
    if how == "resize":
        scales = net.const("scales", np.array([1, 1, 2, 2], np.float32))
        return net.node("Resize", [x, "", scales], mode="nearest")[0]
    if how == "tile":
        return net.node("Tile", [x, net.const("repeats", np.array([1, 1, 2, 2], np.int64))])[0]
    channels = 8 if how == "expand_named" else 1
    target = net.const("expand", np.array([1, channels, 4, 2, 4, 2], np.int64))
    (wide,) = net.node("Expand", [net.reshape(x, [-1, 8, 4, 1, 4, 1]), target])
    return net.reshape(wide, [-1, 8, 8, 8])


@pytest.mark.parametrize("how", ["tile", "expand", "expand_named"])
def test_tile_and_expand_upsampling_pass_channels_through(how):
    model, up = unet(how)
    analysis = analysis_of(model)
    deep = next(g for g in analysis.groups if any(s.size == 8 for s in g.sources))
    assert deep.prunable, deep.frozen_reason
    pruned, report = prune_checked(model, 50)
    sizes = kept_sizes(pruned)
    # skip 6 -> 3, deep 8 -> 4, up 4 -> 2, fused 6 -> 3; the logits (model output) keep 3
    assert sorted(sizes.values()) == [2, 3, 3, 3, 4]
    assert sizes[up] == 2
    assert all("model output" in entry["reason"] for entry in report["frozen"])
    dead_exact(model)


def test_tile_over_the_channel_axis_stays_a_barrier():
    net, x = Net.start(3, 8)
    y = net.act(net.conv(x, 6, 3, 1, bias=True), "Relu")
    (tiled,) = net.node("Tile", [y.name, net.const("r", np.array([1, 2, 1, 1], np.int64))])
    out = net.conv(Tensor(tiled, 12, 8, 8), 3, 1, 1, bias=True)
    analysis = analysis_of(net.model([(out.name, ["N", 3, 8, 8])]))
    reasons = [g.frozen_reason for g in analysis.groups if not g.prunable]
    assert any("repeats the channel axis" in reason for reason in reasons), reasons


def test_conv_transpose_is_a_source_and_reads_its_input_channels():
    model, up = unet("convtranspose")
    analysis = analysis_of(model)
    assert analysis.group_of(up).prunable
    pruned, _ = prune_checked(model, 50)
    sizes = kept_sizes(pruned)
    assert sizes[up] == 2
    node = next(n for n in pruned.graph.node if n.op_type == "ConvTranspose")
    weight = next(i for i in pruned.graph.initializer if i.name == node.input[1])
    assert list(weight.dims) == [4, 2, 2, 2]  # 8 -> 4 inputs read, 4 -> 2 filters made
    dead_exact(model)


def test_resize_decoder_with_a_skip_concat_prunes_exactly():
    model, up = unet("resize")
    pruned, report = prune_checked(model, 50)
    frozen = [entry["reason"] for entry in report["frozen"]]
    assert frozen and all("model output" in reason for reason in frozen)
    assert kept_sizes(pruned)[up] == 2
    dead_exact(model)
