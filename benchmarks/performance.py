"""How close OCNNA scoring runs to one plain onnxruntime pass, and what it costs in memory.

Every ratio is measured side by side in the same run (interleaved, median of repeats),
because the machine is shared and absolute times drift. Each section rewrites its own
generated block of docs/performance.md (prose outside the blocks is kept), so sections
can be rerun one at a time. Needs torchvision (and Pillow for the image folder), except
the workers section, which needs only torch:

    /work/venv-zoo/bin/python benchmarks/performance.py [--sections ratio,floor,...]
    /work/venv/bin/python benchmarks/performance.py --sections workers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import export_torchvision  # noqa: E402

from onnxprune import progress  # noqa: E402
from onnxprune.importance import get_criterion  # noqa: E402
from onnxprune.importance.ocnna import FROBENIUS_BYTES, _as_maps, pca95_frobenius  # noqa: E402
from onnxprune.io import input_specs, load_data, load_model  # noqa: E402
from onnxprune.methods.ocnna import prune_scored, score_model  # noqa: E402
from onnxprune.observe import backward_slice, session_with_outputs  # noqa: E402
from onnxprune.pipeline import prepare  # noqa: E402
from onnxprune.score import score_sources  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "perf"
DOC = REPO / "docs" / "performance.md"
CIFAR = REPO.parent / "shared" / "data" / "cifar10_subset.npz"
BATCH = 64
CONFIGS = [(name, size) for name in ("resnet18", "mobilenet_v2") for size in (32, 64)]


def machine() -> str:
    cpu = next(ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln)
    mem = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if "MemTotal" in ln)
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores (shared with other jobs: load average "
        f"{os.getloadavg()[0]:.1f}), {mem / 2**20:.0f} GB RAM, {platform.system()}; Python "
        f"{platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}"
    )


def zoo_data(name: str, size: int, n: int):
    """A torchvision model (random weights), analysed, with n Gaussian images."""
    path = export_torchvision(name, input_size=size)
    x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    _, analysis, dataset = prepare(str(path), x)
    return analysis, dataset


def plain_session(model, spin: bool = True, threads: int = 0) -> ort.InferenceSession:
    """What a user's deployment would run: default options (ORT_ENABLE_ALL, all cores);
    ``spin=False`` stops idle threads busy-waiting, so CPU time counts only work."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_all(session: ort.InferenceSession, dataset, names=None) -> None:
    for feed in dataset.batches(BATCH):
        session.run(names, feed)


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def score(analysis, dataset, compensate=True, convs_only=False, budget=None):
    """What `onnxprune ocnna` runs to score (compensation means included by default)."""
    groups = analysis.prunable(convs_only)
    crit = get_criterion("ocnna")
    return score_sources(analysis, groups, crit, dataset, BATCH, "cpu", compensate, budget)


def ratio_row(name: str, size: int, n: int, repeats: int) -> str:
    analysis, dataset = zoo_data(name, size, n)
    plain, quiet = plain_session(analysis.model), plain_session(analysis.model, spin=False)
    names = list(analysis.watched_axes(analysis.prunable()))
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    exposed = session_with_outputs(analysis.model, names, level=level)
    run_all(plain, dataset)  # warm-up
    walls, cpus = [], []  # CPU seconds of all threads: robust to other jobs on the cores
    for _ in range(repeats):
        walls.append([timed(run_all, plain, dataset), timed(run_all, exposed, dataset, names)])
        start = time.process_time()
        run_all(quiet, dataset)
        middle = time.process_time()
        walls[-1].append(timed(score, analysis, dataset))
        cpus.append((time.process_time() - middle) / (middle - start))
    walls = np.array(walls)
    ratio = float(np.median(walls[:, 2] / walls[:, 0]))
    cells = [f"{t:.2f}" for t in np.median(walls, axis=0)]
    ok = "yes" if ratio <= 1.5 else "no"
    return row(name, f"{size}x{size}", n, *cells, f"**{ratio:.2f}**", f"{np.median(cpus):.2f}", ok)


def section_ratio(args) -> list[str]:
    rows = [
        "| model | input | N | plain ORT (s) | ORT exposing watched tensors (s) | scoring (s) | "
        "scoring / plain | same, CPU seconds | <= 1.5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    return rows + [
        ratio_row(name, size, n, args.repeats) for name, size in CONFIGS for n in args.samples
    ]


def floor_row(name: str, size: int) -> str:
    analysis, dataset = zoo_data(name, size, BATCH)
    names = list(analysis.watched_axes(analysis.prunable()))
    feed = next(dataset.batches(BATCH))
    maps = [_as_maps(v) for v in session_with_outputs(analysis.model, names).run(names, feed)]
    count = sum(m.shape[1] for m in maps)  # the zoo's exports are channels-first
    big = sum(m.shape[1] for m in maps if min(m.shape[2] - 1, m.shape[3]) > 3)
    spectra = min(timed(lambda: [pca95_frobenius(m) for m in maps]) for _ in range(3))
    plain = plain_session(analysis.model)
    inference = min(timed(plain.run, None, feed) for _ in range(5))
    ms = (f"{1000 * spectra / BATCH:.2f}", f"{1000 * inference / BATCH:.2f}")
    return row(name, f"{size}x{size}", count, big, *ms, f"{spectra / inference:.1f}")


def section_floor(args) -> list[str]:
    rows = [
        "| model | input | maps / sample | of them needing LAPACK (Gram >= 4 x 4) | "
        "spectra, 1 core (ms / sample) | plain ORT, 2 cores (ms / sample) | spectra / plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    return rows + [floor_row(name, size) for name, size in CONFIGS]


def reference_scores(analysis, dataset) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The paper's loop: per filter one run of the graph truncated at its layer, then one
    scikit-learn PCA(0.95) per feature map; importance = CV of the Frobenius norms.
    Returns the scores and the seconds spent per layer."""
    from sklearn.decomposition import PCA

    feed = next(dataset.batches(len(dataset)))
    scores, seconds = {}, {}
    for source in (s for g in analysis.prunable(convs_only=True) for s in g.sources):
        start = time.perf_counter()
        session = plain_session(backward_slice(analysis.model, [source.watched]))
        f = np.zeros((len(dataset), source.size))
        for c in range(source.size):
            for i, a in enumerate(session.run(None, feed)[0][:, c]):  # one run per filter
                f[i, c] = np.linalg.norm(PCA(n_components=0.95).fit_transform(a.astype(float)))
        mean = f.mean(axis=0)
        scores[source.name] = np.divide(f.std(axis=0), mean, np.zeros_like(mean), where=mean > 0)
        seconds[source.name] = time.perf_counter() - start
    return scores, seconds


def section_reference(args) -> list[str]:
    data = np.load(REPO / "samples" / "mnist_dvar.npz")["x"][: args.reference_samples]
    _, analysis, dataset = prepare(str(REPO / "samples" / "mnist_cnn.onnx"), data)
    sources = [s for g in analysis.prunable(convs_only=True) for s in g.sources]
    batched = score(analysis, dataset, compensate=False, convs_only=True)[0]
    fast = np.median([timed(score, analysis, dataset, False, True) for _ in range(args.repeats)])
    start = time.perf_counter()
    reference, per_layer = reference_scores(analysis, dataset)
    slow = time.perf_counter() - start
    diff = max(np.max(np.abs(batched[k] - v) / np.maximum(v, 1e-12)) for k, v in reference.items())
    rows = [
        "| model | N | conv filters (maps) | paper's loop (s) | batched (s) | speed-up | "
        "max score diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("MNIST CNN (samples/)", len(dataset), sum(s.size for s in sources), f"{slow:.1f}",
            f"{fast:.3f}", f"**{slow / fast:.0f}x**", f"{diff:.1e}"),
        "",
        "Per layer (batched = the spectra of that layer's activations alone):",
        "",
        "| layer | filters x map | paper's loop (s) | batched spectra (s) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    names = [s.watched for s in sources]
    values = session_with_outputs(analysis.model, names).run(
        names, next(dataset.batches(len(data)))
    )
    for source, value in zip(sources, values):
        spectra = min(timed(pca95_frobenius, value) for _ in range(args.repeats))
        shape = f"{value.shape[1]} x {value.shape[2]}x{value.shape[3]}"
        ratio = f"{per_layer[source.name] / spectra:.0f}x"
        rows.append(
            row(source.name, shape, f"{per_layer[source.name]:.1f}", f"{spectra:.3f}", ratio)
        )
    return rows


def write_npy(path: Path, source) -> Path:
    """A float32 .npy written in slices (never whole in RAM); reused when it exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, "w+", np.float32, source.shape)
        for start in range(0, len(source), 1024):
            out[start : start + 1024] = source[start : start + 1024]
        out.flush()
    return path


def gaussian(n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    return write_npy(CACHE / f"gauss-{n}x{size}.npy", rng.standard_normal((n, 3, size, size)))


def status() -> dict[str, float]:
    """This process's memory counters from /proc (MB); VmHWM is the peak since exec."""
    keys = ("VmRSS", "RssAnon", "VmHWM")
    lines = [line.split() for line in open("/proc/self/status") if line.split(":")[0] in keys]
    return {line[0].rstrip(":"): int(line[1]) / 1024 for line in lines}


def child(spec: dict) -> dict:
    """In a fresh process (no torch imported): load and score, sampling anonymous RSS."""
    progress.set_quiet(True)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], status()["RssAnon"])
            time.sleep(0.01)

    data = load_data(spec["data"], input_specs(load_model(spec["path"])))
    _, analysis, dataset = prepare(spec["path"], data.subset(spec.get("limit") or len(data)))
    before = status()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    seconds = timed(score, analysis, dataset, True, False, spec.get("budget"))
    done.set()
    thread.join()
    channels = sum(s.size for g in analysis.prunable() for s in g.sources)
    return {
        "seconds": seconds,
        "n": len(dataset),
        "anon_before_mb": before["RssAnon"],
        "peak_mb": status()["VmHWM"],
        "anon_mb": peak[0],
        "f_bytes": 8 * len(dataset) * channels,
    }


def spawn(spec: dict) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def run_children(*specs: dict) -> list[dict]:
    procs = [spawn(spec) for spec in specs]
    return [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]


def section_rss(args) -> list[str]:
    rows = [
        "| model | input | N | --memory-budget (MB) | time (s) | peak RSS (MB) | anonymous RSS "
        "before scoring (MB) | peak (MB) | F matrix (MB) | all activations of N samples (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, budget in (
        ("resnet18", 32, None),
        ("resnet18", 64, None),
        ("resnet18", 64, 64),
    ):
        analysis, dataset = zoo_data(name, size, 1)
        names = list(analysis.watched_axes(analysis.prunable()))
        values = session_with_outputs(analysis.model, names).run(names, next(dataset.batches(1)))
        activations = sum(v.nbytes for v in values) / 2**20
        path = str(export_torchvision(name, input_size=size))
        for n in args.rss_samples:
            r = run_children({"path": path, "data": str(gaussian(n, size)), "budget": budget})[0]
            mb = [
                r["seconds"],
                r["peak_mb"],
                r["anon_before_mb"],
                r["anon_mb"],
                r["f_bytes"] / 2**20,
            ]
            rows.append(
                row(name, f"{size}x{size}", n, budget or "-", *(f"{v:.0f}" for v in mb),
                    f"{n * activations:.0f}")
            )  # fmt: skip
    return rows


def latency_ratio(original, pruned, feed, repeats: int, rounds: int = 5) -> float:
    """Median over rounds of median(pruned) / median(original), the two alternating."""
    ratios = []
    for _ in range(rounds):
        medians = []
        for session in (original, pruned):
            [session.run(None, feed) for _ in range(3)]
            medians.append(np.median([timed(session.run, None, feed) for _ in range(repeats)]))
        ratios.append(medians[1] / medians[0])
    return float(np.median(ratios))


def section_latency(args) -> list[str]:
    rows = [
        "| model | input | batch | k | --round-to | FLOPs ratio | latency ratio | "
        "latency / FLOPs | <= 1.15 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("resnet18", "mobilenet_v2"):
        path = export_torchvision(name, input_size=64)
        x = np.random.default_rng(1).standard_normal((64, 3, 64, 64)).astype(np.float32)
        scored = score_model(str(path), x, batch_size=BATCH)
        original = plain_session(scored.analysis.model, threads=1)
        for k in (20, 40, 60):
            for round_to in (1, 8, 16):
                model, report = prune_scored(scored, k, round_to, reconstruct=False)
                flops = report["flops_after"] / report["flops_before"]
                pruned = plain_session(model, threads=1)
                for batch in (1, 32):
                    feed = {"input": x[:batch]}
                    ratio = latency_ratio(original, pruned, feed, args.latency_repeats)
                    ok = "yes" if ratio <= 1.15 * flops else "no"
                    cells = (f"{flops:.3f}", f"{ratio:.3f}", f"{ratio / flops:.2f}", ok)
                    rows.append(row(name, "64x64", batch, k, round_to, *cells))
    return rows


def cifar_pngs(root: Path, count: int) -> Path:
    """The CIFAR-10 subset's training images and their mirror images, as class folders."""
    from PIL import Image

    if not (root / f".complete-{count}").exists():
        data = np.load(CIFAR)
        x, y, names = data["X_train"], data["y_train"], data["class_names"]
        for i in range(count):
            image = x[i % len(x)].transpose(1, 2, 0)[:, :: 1 if i < len(x) else -1]
            folder = root / str(names[y[i % len(x)]])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i:05d}.png")
        (root / f".complete-{count}").touch()
    return root


def section_bigdata(args) -> list[str]:
    n = args.big_samples
    pixels = np.load(CIFAR)["X_train"]
    npy = write_npy(CACHE / f"cifar-{n}.npy", np.concatenate([pixels, pixels[..., ::-1]])[:n])
    del pixels
    rows = [
        "| data | model | N | time (s) | ms / image | peak RSS (MB) | anonymous RSS before "
        "scoring (MB) | peak (MB) | F matrix (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    path = str(export_torchvision("resnet18", input_size=32))
    for label, data in (("memory-mapped .npy", npy), ("PNG folder", cifar_pngs(CACHE / "png", n))):
        for count in (n // 4, n):
            r = run_children({"path": path, "data": str(data), "limit": count})[0]
            ms = f"{1000 * r['seconds'] / r['n']:.2f}"
            mb = [f"{r[k]:.0f}" for k in ("peak_mb", "anon_before_mb", "anon_mb")]
            kept = r["f_bytes"] <= FROBENIUS_BYTES
            mb.append(f"{r['f_bytes'] / 2**20:.0f}" if kept else "streamed")
            rows.append(row(label, "resnet18 32x32", r["n"], f"{r['seconds']:.0f}", ms, *mb))
    return rows


def resnet18_cifar() -> Path:
    """ResNet-18 laid out as torchvision's (BasicBlocks 2-2-2-2, 64-512 wide) with a 3x3
    stem for 32x32 inputs, random weights: plain torch, so the workers section runs
    without torchvision. Exported once (legacy exporter, BN folded as in deployed ONNX)."""
    path = CACHE / "resnet18-cifar.onnx"
    if path.exists():
        return path
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, stride), nn.ReLU(), *conv_bn(cout, cout))
            same = stride == 1 and cin == cout
            self.skip = nn.Identity() if same else nn.Sequential(*conv_bn(cin, cout, stride, 1))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(0)
    layers: list[nn.Module] = [*conv_bn(3, 64), nn.ReLU()]
    for cin, cout, stride in [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    model = nn.Sequential(*layers).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    return path


def ocnna_run(model: str, data: str, workers: int, options: list[str]) -> tuple[float, float]:
    """(wall seconds, scoring-stage seconds) of `onnxprune ocnna --workers W` in a fresh
    process: start-up, load, analysis, scoring, recovery, verification and writing."""
    out = CACHE / "workers-out.onnx"
    cmd = [sys.executable, "-m", "onnxprune", "ocnna", model, "--k", "40", "--data", data]
    cmd += ["--workers", str(workers), "-o", str(out), "--report", str(out.with_suffix(".json"))]
    start = time.perf_counter()
    subprocess.run([*cmd, *options, "--force", "--quiet"], check=True)
    wall = time.perf_counter() - start
    return wall, json.loads(out.with_suffix(".json").read_text())["timings"]["score_s"]


def section_workers(args) -> list[str]:
    """`onnxprune ocnna --workers 1` and `--workers 2` end to end, interleaved, median of
    repeats; the scoring stage (the only part --workers splits) from the report."""
    mnist = REPO / "samples"
    cases = [
        ("MNIST sample CNN", mnist / "mnist_cnn.onnx", mnist / "mnist_dvar.npz", []),
        ("ResNet-18 32x32 (random weights)", resnet18_cifar(), gaussian(args.samples[0], 32), []),
    ]
    rows = [
        "| model | D_var N | options | --workers | wall time (s) | scoring stage (s) "
        "| wall / --workers 1 | scoring / --workers 1 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, model, data, options in cases:
        n = len(np.load(data, mmap_mode="r")) if str(data).endswith(".npy") else 500
        runs = {w: [] for w in (1, 2)}
        for _ in range(args.repeats):
            for workers in runs:
                runs[workers].append(ocnna_run(str(model), str(data), workers, options))
        wall = {w: np.median([r[0] for r in rs]) for w, rs in runs.items()}
        scoring = {w: np.median([r[1] for r in rs]) for w, rs in runs.items()}
        for w in runs:
            ratios = f"{wall[w] / wall[1]:.2f}", f"{scoring[w] / scoring[1]:.2f}"
            timings = f"{wall[w]:.1f}", f"{scoring[w]:.1f}"
            rows.append(row(name, n, " ".join(options) or "defaults", w, *timings, *ratios))
    return rows


def write_section(name: str, rows: list[str]) -> None:
    """Replace (or append) this section's generated block in docs/performance.md."""
    begin, end = f"<!-- performance.py {name} -->", f"<!-- /performance.py {name} -->"
    block = "\n".join([begin, f"Measured on {machine()}.", "", *rows, end])
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    sections = ("ratio", "floor", "reference", "rss", "latency", "bigdata", "workers")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(sections))
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=128)
    parser.add_argument("--rss-samples", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--big-samples", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    progress.set_quiet(True)
    for name in args.sections.split(","):
        rows = globals()[f"section_{name}"](args)
        print(f"== {name}", *rows, sep="\n", flush=True)
        write_section(name, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
