"""Upsampling decoders (U-Net style): ConvTranspose creates channels (weight axis 1) and
reads them on axis 0, Resize passes them through, and a skip Concat joins encoder and
decoder channels; a per-pixel output map keeps its own channels."""

from __future__ import annotations

import numpy as np
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
        scales = net.const("scales", np.array([1, 1, 2, 2], np.float32))
        (resized,) = net.node("Resize", [deep.name, "", scales], mode="nearest")
        conv = net.conv(Tensor(resized, 8, 8, 8), 4, 3, 1, bias=True)
        up, up_source = conv.name, producer(conv)
    (joined,) = net.node("Concat", [skip.name, up], axis=1)
    fused = net.act(net.conv(Tensor(joined, 10, 8, 8), 6, 3, 1, bias=True), "Relu")
    logits = net.conv(fused, 3, 1, 1, bias=True)
    model = net.model([(logits.name, ["N", 3, 8, 8])])
    return model, up_source


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
