"""``python -m onnxprune`` runs the command line, like the ``onnxprune`` script."""

from onnxprune.cli import main

if __name__ == "__main__":
    main()
