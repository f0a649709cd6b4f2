"""Real architectures for benchmarks: torchvision models with random weights, exported to ONNX.

No weights can be downloaded here, so every model is ``weights=None`` with seed 0; that is
enough to test that analysis and rewriting handle real topologies and to time them.
Needs torchvision (the /work/venv-zoo environment has it):

    /work/venv-zoo/bin/python benchmarks/zoo.py --export-all
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "onnxprune-zoo"  # .cache/ is gitignored

ZOO: list[str] = [
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "vgg16",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "googlenet",
    "regnet_x_400mf",
    "mnasnet0_5",
]

# Beyond the test zoo (benchmarks only, docs/zoo.md): other families users bring.
EXTRA: list[str] = [
    "resnext50_32x4d",
    "wide_resnet50_2",
    "regnet_y_400mf",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "swin_t",
    "alexnet",
    "vit_b_16",
    "inception_v3",
]

# VGG's AdaptiveAvgPool2d((7, 7)) only exports when the 7x7 grid divides the feature map,
# i.e. the input side is a multiple of 224 (2**5 * 7); smaller sizes are raised to this.
# AlexNet's (6, 6) pool likewise; ViT checks its input side; Inception v3 needs >= 75 px.
MIN_INPUT_SIZE: dict[str, int] = {
    "vgg11_bn": 224,
    "vgg16": 224,
    "alexnet": 224,
    "vit_b_16": 224,
    "inception_v3": 299,
}

# Constructor arguments beyond weights=None that some models need.
EXTRA_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


CALIBRATION_BATCHES = 2
CALIBRATION_BATCH_SIZE = 16


def effective_input_size(name: str, input_size: int) -> int:
    """The input side actually used for ``name`` (see MIN_INPUT_SIZE)."""
    return max(input_size, MIN_INPUT_SIZE.get(name, 0))


def build_torchvision(name: str, seed: int = 0, calibrate_bn: bool = True, input_size: int = 64):
    """torchvision.models.<name> with random weights (seeded), in eval mode.

    With default init every BN has mean 0 / var 1, so activations shrink or grow layer by
    layer (efficientnet_b0 outputs ~1e-14, googlenet gives the same output for every input)
    and torch deduplicates the all-zero folded biases into Identity aliases. calibrate_bn
    re-estimates the BN running statistics on seeded Gaussian images (BN layers alone in
    train mode, cumulative average), as a trained network would have them.
    """
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, name)(weights=None, **EXTRA_KWARGS.get(name, {}))
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if calibrate_bn and bns:
        size = effective_input_size(name, input_size)
        generator = torch.Generator().manual_seed(seed + 1)
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over the calibration batches
            bn.train()
        with torch.no_grad():
            for _ in range(CALIBRATION_BATCHES):
                model(torch.randn(CALIBRATION_BATCH_SIZE, 3, size, size, generator=generator))
        model.eval()
    return model


def cache_path(
    name: str,
    input_size: int,
    opset: int,
    cache_dir: str | os.PathLike,
    calibrate_bn: bool = True,
) -> Path:
    """File name carries everything that changes the export, torch/torchvision versions too."""
    import torch
    import torchvision

    size = effective_input_size(name, input_size)
    tag = f"t{torch.__version__.split('+')[0]}-tv{torchvision.__version__.split('+')[0]}"
    bn = "-bncal" if calibrate_bn else ""
    return Path(cache_dir) / f"{name}-{size}px-op{opset}{bn}-{tag}.onnx"


def export_torchvision(
    name: str,
    input_size: int = 64,
    opset: int = 17,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    calibrate_bn: bool = True,
) -> Path:
    """Export (or reuse the cached export of) a torchvision model; returns the .onnx path.

    Legacy TorchScript exporter (dynamo=False), dynamic batch on ``input``/``output``,
    default constant folding, so conv-BN pairs arrive fused as in most deployed ONNX.
    """
    import torch

    path = cache_path(name, input_size, opset, cache_dir, calibrate_bn)
    if path.exists():
        return path
    size = effective_input_size(name, input_size)
    model = build_torchvision(name, calibrate_bn=calibrate_bn, input_size=input_size)
    dummy = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer warnings
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def verify(
    name: str, path: Path, input_size: int, compare: bool = True, calibrate_bn: bool = True
) -> dict[str, object]:
    """Check the export, run it in onnxruntime on a batch of 2, optionally diff against torch."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    size = effective_input_size(name, input_size)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    (out,) = sess.run(None, {"input": x})
    latency = time.perf_counter() - start
    if not np.all(np.isfinite(out)):
        raise AssertionError(f"{name}: non-finite outputs")
    info: dict[str, object] = {
        "size_mb": path.stat().st_size / 2**20,
        "params": sum(int(np.prod(i.dims)) for i in model.graph.initializer),
        "nodes": len(model.graph.node),
        "ops": Counter(n.op_type for n in model.graph.node),
        "input": size,
        "output_shape": out.shape,
        "out_absmax": float(np.abs(out).max()),
        # per-class spread over the 2 inputs: ~0 means the output ignores the input
        "out_batch_std": float(out.std(axis=0).mean()),
        "ort_ms_batch2": latency * 1000,
    }
    if compare:
        import torch

        with torch.no_grad():
            module = build_torchvision(name, calibrate_bn=calibrate_bn, input_size=input_size)
            expected = module(torch.from_numpy(x)).numpy()
        scale = float(np.abs(expected).max()) or 1.0
        info["max_rel_diff"] = float(np.abs(out - expected).max()) / scale
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-all", action="store_true", help="export and verify the ZOO")
    parser.add_argument("--models", nargs="*", default=None, help="subset of the ZOO")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-compare", action="store_true", help="skip the torch diff")
    parser.add_argument(
        "--no-calibrate-bn", action="store_true", help="keep torchvision's default BN stats"
    )
    args = parser.parse_args(argv)
    names = args.models if args.models else (ZOO if args.export_all else [])
    if not names:
        parser.print_help()
        return 2
    failures = 0
    for name in names:
        start = time.perf_counter()
        try:
            calibrate = not args.no_calibrate_bn
            path = export_torchvision(name, args.input_size, args.opset, args.cache_dir, calibrate)
            info = verify(name, path, args.input_size, not args.no_compare, calibrate)
        except Exception as exc:  # report every model, then fail at the end
            failures += 1
            print(f"{name}: FAILED {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
            continue
        ops = ", ".join(f"{op} {n}" for op, n in sorted(info["ops"].items()))
        diff = f" max_rel_diff={info['max_rel_diff']:.1e}" if "max_rel_diff" in info else ""
        print(
            f"{name}: {info['size_mb']:.1f} MB, {info['params'] / 1e6:.2f} M params, "
            f"{info['nodes']} nodes, input {info['input']}px, out {info['output_shape']} "
            f"|max| {info['out_absmax']:.2g} batch-std {info['out_batch_std']:.2g}, "
            f"ort {info['ort_ms_batch2']:.0f} ms/batch2{diff}, "
            f"{time.perf_counter() - start:.1f}s\n    {ops}",
            flush=True,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
