#!/usr/bin/env bash
# Set-up and run in one step, on a fresh machine or an existing checkout.
#   ./dev.sh demo   prune the shipped MNIST sample with OCNNA at k=40, fine-tune 1 epoch, show the table
#   ./dev.sh test   run the test suite
#   ./dev.sh setup  only create .venv and install onnxprune with its test extras
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ONNXPRUNE_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip >/dev/null
  # The small CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[test]"
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    mkdir -p out
    "$VENV/bin/onnxprune" ocnna samples/mnist_cnn.onnx --k 40 \
      --data samples/mnist_dvar.npz --eval samples/mnist_test.npz \
      --finetune samples/mnist_train.npz --epochs 1 \
      -o out/mnist_cnn.ocnna-k40.onnx --report out/report.json --force
    ;;
  test)
    setup
    shift
    "$PY" -m pytest -q "$@"
    ;;
  *) echo "usage: ./dev.sh demo|test|setup" >&2; exit 2 ;;
esac
