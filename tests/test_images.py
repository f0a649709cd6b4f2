"""Streamed data: image folders decoded batch by batch, and memory-mapped .npy files that
stay on disk through loading and scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from onnxprune.errors import DataError
from onnxprune.images import ImageFolder, load_image_folder
from onnxprune.io import InputSpec, load_data

Image = pytest.importorskip("PIL.Image")

RGB8 = InputSpec("input", np.dtype(np.float32), (None, 3, 8, 8))


def _write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root: Path, classes: dict[str, int], size=(8, 8), seed=0) -> dict[Path, np.ndarray]:
    """Class subfolders of random RGB PNGs; returns path -> pixels (H, W, 3)."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in classes.items():
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            path = root / name / f"img{i:02d}.png"
            _write(path, pixels)
            written[path] = pixels
    return written


def test_class_subfolders_give_sorted_labels_and_raw_pixel_values(tmp_path):
    written = _folder(tmp_path, {"dog": 2, "cat": 3})
    data = load_data(tmp_path, [RGB8], require_labels=True)
    assert isinstance(data, ImageFolder)
    assert len(data) == 5 and data.classes == ["cat", "dog"]
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
    batches = list(data.batches(2))
    assert [len(b["input"]) for b in batches] == [2, 2, 1]
    got = np.concatenate([b["input"] for b in batches])
    assert got.dtype == np.float32 and got.shape == (5, 3, 8, 8)
    want = np.stack([written[p] for p in sorted(written)]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want.astype(np.float32))  # 0..255, like uint8 .npz


def test_images_are_resized_to_the_model_input_with_bilinear_filtering(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    _write(tmp_path / "a.png", pixels)
    (batch,) = load_data(tmp_path, [RGB8]).batches(4)
    want = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(batch["input"][0], want.transpose(2, 0, 1))


def test_channels_last_grey_and_integer_inputs(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _write(tmp_path / "a.png", pixels)
    nhwc = InputSpec("x", np.dtype(np.uint8), (None, 8, 8, 3))
    (batch,) = load_image_folder(tmp_path, [nhwc]).batches(1)
    np.testing.assert_array_equal(batch["x"][0], pixels)
    grey = InputSpec("x", np.dtype(np.float32), (None, 1, 8, 8))
    (batch,) = load_image_folder(tmp_path, [grey]).batches(1)
    want = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(batch["x"][0, 0], want)


def test_jpeg_files_are_read(tmp_path):
    pixels = np.full((8, 8, 3), 120, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    (batch,) = load_data(tmp_path, [RGB8]).batches(1)
    assert np.abs(batch["input"] - 120).max() <= 2


def test_decoding_is_lazy_so_a_bad_file_fails_only_when_its_batch_is_read(tmp_path):
    _folder(tmp_path, {"a": 10})
    bad = sorted((tmp_path / "a").iterdir())[7]
    bad.write_bytes(b"not an image")
    data = load_data(tmp_path, [RGB8])  # listing only: nothing decoded yet
    batches = data.batches(4)
    assert next(batches)["input"].shape == (4, 3, 8, 8)
    with pytest.raises(DataError, match=f"cannot read image .*{bad.name}"):
        next(batches)


def test_bad_folders_are_one_line_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG"):
        load_data(tmp_path / "empty", [RGB8])
    flat = tmp_path / "flat"
    _write(flat / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert load_data(flat, [RGB8]).labels is None
    with pytest.raises(DataError, match="one subfolder per class"):
        load_data(flat, [RGB8], require_labels=True)
    _write(flat / "cls" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="mixes images and class subfolders"):
        load_data(flat, [RGB8])
    vector = InputSpec("x", np.dtype(np.float32), (None, 16))
    with pytest.raises(DataError, match="not an image batch"):
        load_data(tmp_path / "flat" / "cls", [vector])
    dynamic = InputSpec("x", np.dtype(np.float32), (None, 3, None, None))
    with pytest.raises(DataError, match="no fixed size"):
        load_data(tmp_path / "flat" / "cls", [dynamic])


def test_subset_keeps_order_and_labels_without_decoding(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    data = load_data(tmp_path, [RGB8])
    part = data.subset(3)
    assert isinstance(part, ImageFolder) and len(part) == 3
    np.testing.assert_array_equal(part.labels, [0, 0, 1])
    np.testing.assert_array_equal(part.arrays["input"], data.arrays["input"][:3])


def test_ocnna_on_an_image_folder_equals_ocnna_on_the_same_pixels_as_an_array(
    built_model, tmp_path
):
    import onnxprune

    model = built_model("vgg_like")
    written = _folder(tmp_path, {"a": 6, "b": 6}, size=(32, 32), seed=3)
    pixels = np.stack([written[p] for p in sorted(written)]).transpose(0, 3, 1, 2)
    from_folder, report = onnxprune.ocnna(model, k=40, data=tmp_path, eval_data=tmp_path)
    labels = np.repeat([0, 1], 6)
    from_array, want = onnxprune.ocnna(
        model, k=40, data=pixels, eval_data={"x": pixels, "y": labels}
    )
    assert report["samples"] == 12 and "accuracy_before" in report
    assert report["accuracy_before"] == want["accuracy_before"]
    got = {t.name: numpy_helper.to_array(t) for t in from_folder.graph.initializer}
    expected = {t.name: numpy_helper.to_array(t) for t in from_array.graph.initializer}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def test_npy_data_stays_memory_mapped_through_loading(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((300, 3, 8, 8)).astype(np.float32))
    data = load_data(path, [RGB8])
    assert isinstance(data.arrays["input"], np.memmap)  # not copied into RAM
    batch = next(data.batches(7))["input"]
    assert not isinstance(batch, np.memmap) and batch.shape == (7, 3, 8, 8)
    np.testing.assert_array_equal(batch, np.load(path)[:7])
