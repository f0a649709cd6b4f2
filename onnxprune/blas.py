"""One BLAS thread where many small products run, or where results must be reproducible."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS, built once (a fresh scan costs ~0.5 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return None
    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_state: dict[str, Any] = {"users": 0, "limiter": None}  # threads inside the limit


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS/LAPACK single-threaded inside the block.

    OpenBLAS splits even a 64 x 64 eigvalsh across its threads and the synchronisation
    costs several times the work (26 s with 2 threads, 1.6 s with one); and its threaded
    products are not bit-reproducible from run to run, which reconstruction's solves must
    be. The limit is process-wide, so concurrent threads share it: the first in sets it,
    the last out restores it. Without threadpoolctl nothing changes.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is optional
        yield
        return
    with _blas_lock:
        if _blas_state["users"] == 0:
            _blas_state["limiter"] = controller.limit(limits=1, user_api="blas")
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state.pop("limiter").restore_original_limits()
