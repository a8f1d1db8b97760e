"""The two environments the tests run in, and how a test reaches the other one.

``.venv`` (the main environment: numpy 2, ``ai-edge-litert``, every extra) runs the whole suite.
``.venv-tflite`` (Python 3.11, numpy < 2, ``tflite-runtime``, the ``edge-tflite`` and ``test``
extras only: no LiteRT, no TensorFlow, no server extras) runs the device tests listed in
``scripts/test.sh`` (``TFLITE_TESTS``). What a device test needs from the main environment runs in
the main environment's Python as a child process: converting plans (TensorFlow), the real server,
and the LiteRT side of the cross-environment interpreter comparison.

Which environment this is follows from what is installed: ``tflite-runtime`` is importable only
in ``.venv-tflite`` (``tests/edgefleet/test_runtime.py`` checks that the main one lacks it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TFLITE_ENV = importlib.util.find_spec("tflite_runtime") is not None
ENV_NAME = ".venv-tflite" if TFLITE_ENV else ".venv"
# The interpreter ``auto`` must pick here: each environment has exactly one installed.
ENV_INTERPRETER = "tflite-runtime" if TFLITE_ENV else "ai-edge-litert"


def main_env_python() -> str:
    """The main environment's Python executable.

    This one in the main environment; in ``.venv-tflite`` ``$EDGEFLEET_TEST_MAIN_PYTHON`` (set by
    ``scripts/test.sh``), else ``<repo>/.venv/bin/python``.

    Raises
    ------
    RuntimeError
        In ``.venv-tflite``, when that Python does not exist (run ``bash scripts/setup.sh``).
    """
    if not TFLITE_ENV:
        return sys.executable
    path = os.environ.get("EDGEFLEET_TEST_MAIN_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"the tflite-runtime tests need the main environment's Python for what "
            f"{ENV_NAME} lacks (TensorFlow, the server), and {path} is missing: run "
            "`bash scripts/setup.sh` or set EDGEFLEET_TEST_MAIN_PYTHON"
        )
    return path
