"""Where the shared real datasets live: ../shared/data beside the checkout (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ONNXPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
if not SHARED_DATA.is_dir() and Path("/work/shared/data").is_dir():
    SHARED_DATA = Path("/work/shared/data")
