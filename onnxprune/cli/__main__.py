"""`python -m onnxprune.cli` (what `torchrun -m onnxprune.cli ...` needs)."""

from . import main

main()
