"""How close OCNNA scoring runs to one plain onnxruntime pass, and what it costs in memory.

Every ratio is measured side by side in the same run (interleaved, median of repeats),
because the machine is shared and absolute times drift. Writes the tables into the
generated block of docs/performance.md (prose outside it is kept). Needs torchvision:

    /work/venv-zoo/bin/python benchmarks/performance.py [--sections ratio,reference,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from onnxprune.methods.ocnna import prune_scored, score_model  # noqa: E402
from onnxprune.observe import backward_slice, session_with_outputs  # noqa: E402
from onnxprune.pipeline import prepare  # noqa: E402
from onnxprune.score import score_sources  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "perf"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- performance.py: begin -->", "<!-- performance.py: end -->"
BATCH = 64
SECTIONS = ("ratio", "floor", "reference", "rss", "latency", "bigdata", "workers")


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if "MemTotal" in line)
    import torch

    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, {mem / 2**20:.0f} GB RAM, "
        f"{platform.system()} {platform.machine()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at start (the 2 cores are shared)"
    )


def zoo_data(name: str, size: int, n: int, seed: int = 0):
    """A torchvision model (random weights) analysed with n Gaussian images."""
    path = export_torchvision(name, input_size=size)
    x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    _, analysis, dataset = prepare(str(path), x)
    return analysis, dataset


def plain_session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def run_all(session: ort.InferenceSession, dataset, names=None) -> None:
    for feed in dataset.batches(BATCH):
        session.run(names, feed)


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def score(analysis, dataset, compensate=True, convs_only=False, budget=None):
    groups = analysis.prunable(convs_only)
    crit = get_criterion("ocnna")
    return score_sources(analysis, groups, crit, dataset, BATCH, "cpu", compensate, budget)


# ----------------------------------------------------------------------------- sections


def ratio_row(name: str, size: int, n: int, repeats: int) -> str:
    analysis, dataset = zoo_data(name, size, n)
    plain = plain_session(analysis.model)
    names = list(analysis.watched_axes(analysis.prunable()))
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    exposed = session_with_outputs(analysis.model, names, level=level)
    run_all(plain, dataset)  # warm-up
    times = np.array(
        [
            (
                timed(run_all, plain, dataset),
                timed(run_all, exposed, dataset, names),
                timed(score, analysis, dataset),
            )
            for _ in range(repeats)
        ]
    )
    ratio = float(np.median(times[:, 2] / times[:, 0]))
    p, e, t = np.median(times, axis=0)
    ok = "yes" if ratio <= 1.5 else "no"
    return row(
        name, f"{size}x{size}", n, f"{p:.2f}", f"{e:.2f}", f"{t:.2f}", f"**{ratio:.2f}**", ok
    )


def section_ratio(args) -> list[str]:
    rows = [
        "| model | input | N | plain ORT (s) | exposed-tensor ORT (s) | scoring (s) | "
        "scoring / plain | <= 1.5? |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("resnet18", "mobilenet_v2"):
        for size in (32, 64):
            for n in args.samples:
                rows.append(ratio_row(name, size, n, args.repeats))
                print(rows[-1], flush=True)
    return rows


def reference_scores(analysis, dataset) -> dict[str, np.ndarray]:
    """The paper's loop: per filter one run of the graph truncated at its layer, then one
    scikit-learn PCA(0.95) per feature map; importance = CV of the Frobenius norms."""
    from sklearn.decomposition import PCA

    feed = next(dataset.batches(len(dataset)))
    scores = {}
    for group in analysis.prunable(convs_only=True):
        for source in group.sources:
            session = plain_session(backward_slice(analysis.model, [source.watched]))
            f = np.zeros((len(dataset), source.size))
            for c in range(source.size):
                maps = session.run(None, feed)[0][:, c]  # one prediction per filter
                for i, a in enumerate(maps):
                    reduced = PCA(n_components=0.95).fit_transform(a.astype(np.float64))
                    f[i, c] = np.linalg.norm(reduced)
            mean = f.mean(axis=0)
            scores[source.name] = np.divide(
                f.std(axis=0), mean, np.zeros_like(mean), where=mean > 0
            )
    return scores


def section_reference(args) -> list[str]:
    data = np.load(REPO / "samples" / "mnist_dvar.npz")["x"][: args.reference_samples]
    _, analysis, dataset = prepare(str(REPO / "samples" / "mnist_cnn.onnx"), data)
    filters = sum(s.size for g in analysis.prunable(convs_only=True) for s in g.sources)
    batched_times, batched = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        batched = score(analysis, dataset, compensate=False, convs_only=True)[0]
        batched_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    reference = reference_scores(analysis, dataset)
    ref_time = time.perf_counter() - start
    diff = max(
        float(np.max(np.abs(batched[k] - v) / np.maximum(v, 1e-12))) for k, v in reference.items()
    )
    t = float(np.median(batched_times))
    row = (
        f"| MNIST CNN (samples/) | {len(dataset)} | {filters} | {ref_time:.1f} | {t:.3f} | "
        f"**{ref_time / t:.0f}x** | {diff:.1e} |"
    )
    print(row, flush=True)
    return [
        "| model | N | conv filters | paper loop (s) | batched (s) | speed-up | max score diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row,
    ]


def write_npy(path: Path, n: int, size: int, source: np.ndarray | None = None) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 3, size, size))
    rng = np.random.default_rng(0)
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        if source is None:
            out[start:stop] = rng.standard_normal((stop - start, 3, size, size))
        else:
            out[start:stop] = source[start:stop]
    out.flush()
    return path


def child(spec: dict) -> dict:
    """Runs in a fresh process: load + score, sampling RSS (total and anonymous)."""
    progress.set_quiet(True)
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            status = dict(line.split(":", 1) for line in open("/proc/self/status"))
            peak["rss"] = max(peak["rss"], int(status["VmRSS"].split()[0]))
            peak["anon"] = max(peak["anon"], int(status["RssAnon"].split()[0]))
            time.sleep(0.01)

    path = export_torchvision(spec["model"], input_size=spec["size"])
    data = spec["data"]
    if spec.get("limit"):
        from onnxprune.io import input_specs, load_data, load_model

        data = load_data(data, input_specs(load_model(str(path)))).subset(spec["limit"])
    _, analysis, dataset = prepare(str(path), data)
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE") // 1024
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    score(analysis, dataset, budget=spec.get("budget"))
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    channels = sum(s.size for g in analysis.prunable() for s in g.sources)
    return {
        "seconds": seconds,
        "n": len(dataset),
        "base_mb": base / 1024,
        "peak_mb": max(peak["rss"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "anon_mb": peak["anon"] / 1024,
        "f_mb": 8 * len(dataset) * channels / 2**20,
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def section_rss(args) -> list[str]:
    rows = [
        "| model | input | N | budget (MB) | peak RSS (MB) | peak anon. RSS (MB) | "
        "RSS before scoring (MB) | F matrix if kept (MB) | all activations (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, budget in (
        ("resnet18", 32, None),
        ("resnet18", 64, None),
        ("resnet18", 64, 64),
    ):
        analysis, _ = zoo_data(name, size, 2)
        names = list(analysis.watched_axes(analysis.prunable()))
        per_sample = sum(
            v[0].nbytes
            for v in session_with_outputs(analysis.model, names).run(
                names, {"input": np.zeros((1, 3, size, size), np.float32)}
            )
        )
        for n in args.rss_samples:
            npy = write_npy(CACHE / f"gauss-{n}x{size}.npy", n, size)
            r = run_child({"model": name, "size": size, "data": str(npy), "budget": budget})
            rows.append(
                f"| {name} | {size}x{size} | {n} | {budget or '-'} | {r['peak_mb']:.0f} | "
                f"{r['anon_mb']:.0f} | {r['base_mb']:.0f} | {r['f_mb']:.0f} | "
                f"{n * per_sample / 2**20:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def latency_pair(a, b, feed, repeats: int, rounds: int = 5) -> float:
    """Median over rounds of median(b) / median(a), the two sessions alternating."""
    ratios = []
    for _ in range(rounds):
        medians = []
        for session in (a, b):
            for _ in range(3):
                session.run(None, feed)
            medians.append(
                np.median([timed(lambda s=session: s.run(None, feed)) for _ in range(repeats)])
            )
        ratios.append(medians[1] / medians[0])
    return float(np.median(ratios))


def section_latency(args) -> list[str]:
    rows = [
        "| model | input | batch | k | round-to | FLOPs ratio | latency ratio | "
        "latency / FLOPs | <= 1.15? |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, size in (("resnet18", 64), ("mobilenet_v2", 64)):
        path = export_torchvision(name, input_size=size)
        x = np.random.default_rng(1).standard_normal((64, 3, size, size)).astype(np.float32)
        scored = score_model(str(path), x, batch_size=BATCH)
        original = plain_session(scored.analysis.model)
        for k in (20, 40, 60):
            for round_to in (1, 8, 16):
                model, report = prune_scored(scored, k, round_to)
                flops = report["flops_after"] / report["flops_before"]
                pruned = plain_session(model)
                for batch in (1, 32):
                    ratio = latency_pair(
                        original, pruned, {"input": x[:batch]}, args.latency_repeats
                    )
                    ok = "yes" if ratio <= 1.15 * flops else "no"
                    cells = (f"{flops:.3f}", f"{ratio:.3f}", f"{ratio / flops:.2f}", ok)
                    rows.append(row(name, f"{size}x{size}", batch, k, round_to, *cells))
                    print(rows[-1], flush=True)
    return rows


def cifar_images(root: Path, count: int) -> Path:
    """The CIFAR-10 subset's training images, plus mirrored copies, as class folders of PNGs."""
    from PIL import Image

    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    data = np.load(REPO.parent / "shared" / "data" / "cifar10_subset.npz")
    x, y, names = data["X_train"], data["y_train"], data["class_names"]
    for i in range(count):
        img = x[i % len(x)].transpose(1, 2, 0)
        img = img if i < len(x) else img[:, ::-1]
        folder = root / str(names[y[i % len(x)]])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i:05d}.png")
    marker.touch()
    return root


def section_bigdata(args) -> list[str]:
    rows = [
        "| data | model | N | time (s) | ms / image | peak RSS (MB) | peak anon. RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    n = args.big_samples
    folder = cifar_images(CACHE / "cifar-png", n)
    pixels = np.load(REPO.parent / "shared" / "data" / "cifar10_subset.npz")["X_train"]
    doubled = np.concatenate([pixels, pixels[..., ::-1]])[:n].astype(np.float32)
    npy = write_npy(CACHE / f"cifar-{n}.npy", n, 32, doubled)
    del pixels, doubled
    for label, data in ((".npy (memory-mapped)", str(npy)), ("PNG folder", str(folder))):
        for count in (n // 4, n):
            r = run_child({"model": "resnet18", "size": 32, "data": data, "limit": count})
            rows.append(
                f"| {label} | resnet18 32x32 | {r['n']} | {r['seconds']:.0f} | "
                f"{1000 * r['seconds'] / r['n']:.2f} | {r['peak_mb']:.0f} | {r['anon_mb']:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def section_workers(args) -> list[str]:
    """One process with the threaded pipeline vs two processes on half the data each
    (process start, model load and analysis included: what --workers 2 would pay)."""
    n = args.samples[0]
    whole = write_npy(CACHE / f"gauss-{n}x32.npy", n, 32)
    halves = [
        write_npy(CACHE / f"gauss-{n}x32-half{i}.npy", n // 2, 32, np.load(whole)[i * n // 2 :])
        for i in (0, 1)
    ]

    def spawn(path: Path) -> subprocess.Popen:
        spec = json.dumps({"model": "resnet18", "size": 32, "data": str(path)})
        return subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.PIPE)

    def run(paths: list[Path]) -> None:
        for proc in [spawn(path) for path in paths]:
            proc.communicate()

    times = np.array(
        [(timed(lambda: run([whole])), timed(lambda: run(halves))) for _ in range(args.repeats)]
    )
    one, two = np.median(times, axis=0)
    ratio = float(np.median(times[:, 1] / times[:, 0]))
    return [
        "| resnet18 32x32, N | 1 process, threaded pipeline (s) | 2 processes x N/2 (s) | 2 / 1 |",
        "|---:|---:|---:|---:|",
        f"| {n} | {one:.1f} | {two:.1f} | {ratio:.2f} |",
    ]


def floor_row(name: str, size: int) -> str:
    from onnxprune.importance.ocnna import _as_maps, pca95_frobenius

    analysis, dataset = zoo_data(name, size, BATCH)
    names = list(analysis.watched_axes(analysis.prunable()))
    feed = next(dataset.batches(BATCH))
    maps = [_as_maps(v) for v in session_with_outputs(analysis.model, names).run(names, feed)]
    count = sum(m.shape[1] for m in maps)  # zoo exports are channels-first
    big = sum(m.shape[1] for m in maps if min(m.shape[2] - 1, m.shape[3]) > 3)
    spectra = min(timed(lambda: [pca95_frobenius(m) for m in maps]) for _ in range(3))
    plain = plain_session(analysis.model)
    inference = min(timed(plain.run, None, feed) for _ in range(5))
    ms = (f"{1000 * spectra / BATCH:.2f}", f"{1000 * inference / BATCH:.2f}")
    return row(name, f"{size}x{size}", count, big, *ms, f"{spectra / inference:.1f}")


def section_floor(args) -> list[str]:
    """Why scoring cannot reach one inference pass on this CPU: the spectra alone."""
    rows = [
        "| model | input | maps / sample | of them LAPACK-sized (>= 4 x 4 Gram) | "
        "spectra, 1 core (ms / sample) | plain ORT, 2 cores (ms / sample) | spectra / plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("resnet18", "mobilenet_v2"):
        for size in (32, 64):
            rows.append(floor_row(name, size))
            print(rows[-1], flush=True)
    return rows


TITLES = {
    "ratio": "Scoring time / plain onnxruntime inference (same model, data, batch 64)",
    "floor": "The CPU floor: spectra alone vs one inference pass",
    "reference": "Batched scorer vs the paper's loop (one truncated run per filter, sklearn PCA)",
    "rss": "Peak memory while scoring as N grows 4x (fresh process per row, memory-mapped .npy)",
    "latency": "Pruned vs original onnxruntime latency against the FLOPs ratio",
    "bigdata": "20,000 CIFAR-size images: memory-mapped .npy and a PNG folder",
    "workers": "Two local worker processes vs one threaded process",
}


def write_doc(tables: dict[str, list[str]], header: str) -> None:
    block = [BEGIN, "", header, ""]
    for name, rows in tables.items():
        block += [f"### {TITLES[name]}", "", *rows, ""]
    block.append(END)
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + "\n".join(block) + text[stop:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=64)
    parser.add_argument("--rss-samples", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--big-samples", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    progress.set_quiet(True)
    header = f"Measured by `benchmarks/performance.py` on {machine()}."
    tables = {}
    for name in args.sections.split(","):
        print(f"== {name}", flush=True)
        tables[name] = globals()[f"section_{name}"](args)
    write_doc(tables, header + f" Load average at the end: {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
