"""Shared fixtures: seeded RNG, temp model paths, a cache of exported test models, and
clean skipping of torchvision-dependent (``zoo``) tests.

torchvision can be absent, or present yet broken (built for another torch: it then raises
RuntimeError/OSError on import, not ImportError), so every check here catches any
exception and turns it into a skip, never a collection error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "onnxprune-tests"  # .cache/ is gitignored

_import_errors: dict[str, str | None] = {}


def import_error(modname: str) -> str | None:
    """Why ``modname`` cannot be imported (any exception), or None if it imports; cached."""
    if modname not in _import_errors:
        try:
            importlib.import_module(modname)
            _import_errors[modname] = None
        except Exception as exc:  # broken installs raise RuntimeError, OSError, ...
            _import_errors[modname] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return _import_errors[modname]


def importorskip_any(modname: str) -> ModuleType:
    """Like pytest.importorskip, but any import failure skips (module level or in a test).

    Usage at the top of a test module: ``torchvision = importorskip_any("torchvision")``
    (import it with ``from conftest import importorskip_any``).
    """
    error = import_error(modname)
    if error is not None:
        pytest.skip(f"{modname} unavailable ({error})", allow_module_level=True)
    return importlib.import_module(modname)


def has_torchvision() -> bool:
    """True when torchvision imports cleanly in this environment."""
    return import_error("torchvision") is None


#: Decorator form: ``@requires_torchvision`` skips the test without torchvision.
requires_torchvision = pytest.mark.zoo


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``zoo`` (see pyproject) skip cleanly when torchvision cannot load."""
    if item.get_closest_marker("zoo") is not None:
        error = import_error("torchvision")
        if error is not None:
            pytest.skip(f"torchvision unavailable ({error})")


@pytest.fixture
def torchvision() -> ModuleType:
    """The torchvision module, or a skip."""
    return importorskip_any("torchvision")


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh, fixed-seed generator per test so data never depends on test order."""
    return np.random.default_rng(0)


@pytest.fixture
def tmp_model_path(tmp_path: Path) -> Path:
    """Where a test may write a model file (the file does not exist yet)."""
    return tmp_path / "model.onnx"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Session-wide cache of exported test models under .cache/onnxprune-tests."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR


@pytest.fixture(scope="session")
def built_model(model_cache_dir: Path) -> Callable[..., onnx.ModelProto]:
    """``built_model(name, keep_bn=False, seed=0)`` -> a fresh ModelProto of a test builder.

    Exports are cached on disk (keyed by builders.py source and torch/onnx versions), and
    each call returns a new object, so tests may mutate what they get.
    """
    from builders import cached_build  # torch is imported only by tests that ask for it

    def get(name: str, *, keep_bn: bool = False, seed: int = 0) -> onnx.ModelProto:
        return cached_build(name, model_cache_dir, keep_bn=keep_bn, seed=seed)

    return get
