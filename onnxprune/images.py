"""Image folders as datasets decoded batch by batch, so they never have to fit in RAM.

A folder of PNG/JPEG files, or of class subfolders holding them (the sorted subfolder
names become labels 0..K-1, as in torchvision's ImageFolder). Each image is converted to
the model's channel count (RGB or grey), resized to its input height and width, and
given as raw pixel values 0..255 cast to the input type -- the same convention as uint8
arrays in .npz/.npy files, so models that normalise inside need nothing else.
Reading needs Pillow (the ``images`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import Dataset, InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Transform = Callable[[np.ndarray], np.ndarray]


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def list_images(root: str | os.PathLike) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """(files, labels or None, class names) of an image folder, in a fixed sorted order."""
    root = Path(root)
    direct = _images_in(root, recursive=False)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if direct and classes:
        raise DataError(f"image folder mixes images and class subfolders: {root}")
    if direct:
        return direct, None, []
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = _images_in(root / name, recursive=True)
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(f"no PNG or JPEG images in the image folder {root}")
    return files, np.asarray(labels, dtype=np.int64), classes


def image_layout(spec: InputSpec) -> tuple[bool, int, int, int]:
    """(channels_last, channels, height, width) an image batch must have for ``spec``."""
    shape = spec.shape
    text = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
    if len(shape) != 4:
        raise DataError(f"model input '{spec.name}' {text} is not an image batch")
    first, last = shape[1], shape[3]
    if first in (1, 3):
        channels_last, (channels, height, width) = False, shape[1:]
    elif last in (1, 3):
        channels_last, (height, width, channels) = True, shape[1:]
    else:
        raise DataError(f"model input '{spec.name}' {text} has no 1- or 3-channel axis")
    if height is None or width is None:
        raise DataError(f"model input '{spec.name}' {text} has no fixed size to resize to")
    return channels_last, int(channels), int(height), int(width)


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            "reading an image folder needs Pillow: pip install 'onnxprune[images]'"
        ) from exc
    return Image


class ImageFolder(Dataset):
    """A :class:`Dataset` over image files; only the batch being fed is ever decoded."""

    def __init__(
        self,
        root: str | os.PathLike,
        files: Sequence[Path],
        labels: np.ndarray | None,
        classes: Sequence[str],
        spec: InputSpec,
        transform: Transform | None = None,
    ) -> None:
        self.files = list(files)
        self.labels = labels
        self.classes = list(classes)
        self.specs = [spec]
        self.source = str(root)
        self.root = Path(root)
        self.transform = transform
        self._layout = image_layout(spec)
        self._image = _pillow()

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        """One image as uint8 (H, W, C) at the model's size."""
        channels_last, channels, height, width = self._layout
        image_module = self._image
        try:
            with image_module.open(path) as image:
                image = image.convert("RGB" if channels == 3 else "L")
                if image.size != (width, height):
                    image = image.resize((width, height), image_module.Resampling.BILINEAR)
                array = np.asarray(image)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        return array if array.ndim == 3 else array[:, :, None]

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive feeds of at most ``batch_size`` images, decoded on demand."""
        batch_size = self.batch_size(batch_size)
        spec = self.specs[0]
        channels_last = self._layout[0]
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            images = np.stack([self._read(p) for p in self.files[start : start + batch_size]])
            if not channels_last:
                images = images.transpose(0, 3, 1, 2)
            batch = np.ascontiguousarray(images, dtype=spec.dtype)
            if self.transform is not None:
                batch = np.ascontiguousarray(self.transform(batch), dtype=spec.dtype)
            yield {spec.name: batch}

    def subset(self, count: int) -> ImageFolder:
        """The first ``count`` images (no decoding)."""
        labels = None if self.labels is None else self.labels[:count]
        return ImageFolder(
            self.root, self.files[:count], labels, self.classes, self.specs[0], self.transform
        )

    def take(self, index: np.ndarray) -> ImageFolder:
        """The images at ``index`` (no decoding)."""
        labels = None if self.labels is None else self.labels[index]
        files = [self.files[i] for i in index.tolist()]
        return ImageFolder(self.root, files, labels, self.classes, self.specs[0], self.transform)

    @property
    def arrays(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        """Every image decoded into one array: for stages that need random access (training);
        observation and scoring stream :meth:`batches` instead."""
        name = self.specs[0].name
        return {name: np.concatenate([batch[name] for batch in self.batches(256)])}


def load_image_folder(
    root: str | os.PathLike,
    specs: list[InputSpec],
    require_labels: bool = False,
    transform: Transform | None = None,
) -> ImageFolder:
    """An :class:`ImageFolder` for a single-input image model; checks only the listing."""
    if len(specs) != 1:
        raise DataError(f"an image folder can feed a model with one input, not {len(specs)}")
    files, labels, classes = list_images(root)
    if require_labels and labels is None:
        raise DataError(f"labelled image data needs one subfolder per class: {root}")
    fixed = specs[0].shape[0] if specs[0].shape else None
    if fixed and len(files) % fixed:
        raise DataError(
            f"model input '{specs[0].name}' has a fixed batch of {fixed}; "
            f"the folder's {len(files)} images are not a multiple of it"
        )
    return ImageFolder(root, files, labels, classes, specs[0], transform)
