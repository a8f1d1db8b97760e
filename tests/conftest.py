"""Shared session fixtures: the digits data split and a built, briefly trained digits MLP plan;
the longest test files scheduled first (:data:`LONGEST_FIRST`); and no app's background thread
outliving the test that started it (:func:`_no_app_thread_outlives_its_test`).

``digits_plan_dir`` is built once per session. The TensorFlow conversion runs in a child process
(so test modules that never author models do not load TensorFlow), then the plan is trained for
a few epochs on the device runtime (this environment's interpreter, see :mod:`tests.environments`)
and its weights written back: test accuracy is about 0.9.
Copy it (``shutil.copytree``) before modifying it.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.datasets import Dataset, load_dataset
from tests.environments import main_env_python

DIGITS_SEED = 0
DIGITS_PLAN_EPOCHS = 10
DIGITS_PLAN_LR = 0.1

_BUILD = textwrap.dedent(
    """
    import sys
    from authoring.plans import build_dataset_plan
    build_dataset_plan(sys.argv[1], dataset="digits", arch="mlp", hidden=(64,), seed=0,
                       split_seed=int(sys.argv[2]))
    """
)


def build_plan_in_subprocess(out: Path, split_seed: int = DIGITS_SEED) -> None:
    """Build the (untrained) digits MLP plan into ``out`` in a child Python process.

    The child is the main environment's Python (:func:`tests.environments.main_env_python`):
    TensorFlow, which converts the plan, is not installed in ``.venv-tflite``.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [main_env_python(), "-c", _BUILD, str(out), str(split_seed)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the digits plan failed:\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="session")
def digits_data() -> Dataset:
    """The digits data set, stratified 80/20 split with seed 0 (raw pixel values 0..16)."""
    return load_dataset("digits", seed=DIGITS_SEED)


@pytest.fixture(scope="session")
def digits_plan_dir(tmp_path_factory: pytest.TempPathFactory, digits_data: Dataset) -> Path:
    """A digits MLP (64 → 64 ReLU → 10) plan directory, trained 10 epochs on the device runtime.

    Session-scoped and shared: do not modify it in place (copy it first).
    """
    from edgefleet.plan import save_weights
    from edgefleet.runtime import WEIGHTS_FILE, PlanRuntime

    out = tmp_path_factory.mktemp("digits-plan")
    build_plan_in_subprocess(out)
    runtime = PlanRuntime.from_dir(out)
    runtime.fit(digits_data.x_train, digits_data.y_train, epochs=DIGITS_PLAN_EPOCHS,
                lr=DIGITS_PLAN_LR, seed=0)
    save_weights(out / WEIGHTS_FILE, runtime.get_weights(),
                 plan_sha256=runtime.manifest.plan_sha256)
    return out


#: The threads the server's lifespan starts and its shutdown stops (:func:`server.main.create_app`).
APP_THREADS = ("edgefleet-rollouts", "edgefleet-scrub", "edgefleet-serving-table", "inference-log")


@pytest.fixture(autouse=True)
def _no_app_thread_outlives_its_test() -> Iterator[None]:
    """Fail a test after whose teardown an app thread it started still runs: an app whose
    lifespan never shut down (a ``TestClient`` entered again, e.g. by code under test, replaces
    the exit of its first lifespan), whose controller then ticks a database that is dropped.
    Apps of module or session fixtures start before this fixture and are not counted."""
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate()
               if t not in before and t.name in APP_THREADS and t.is_alive()]
    for t in started:
        t.join(timeout=5)
    left = [t.name for t in started if t.is_alive()]
    assert not left, f"background threads of an app outlived the test: {left}"


#: The test files that take longest (measured with ``--durations``, slowest first: per file, the
#: sum of its tests' setup, call and teardown). Under ``pytest -n 2 --dist loadfile
#: --no-loadscope-reorder`` (``scripts/test.sh``) they are handed out first, so the two workers
#: finish together instead of one running a long file alone at the end; files not listed keep
#: pytest's order. A missing name is ignored.
LONGEST_FIRST = (
    "tests/aggregation/test_deployment.py",
    "tests/server/test_fuzz.py",
    "tests/edge_client/test_tampering.py",
    "tests/server/test_rollouts_e2e.py",
    "tests/simulation/test_fleet.py",
    "tests/test_topology.py",
    "tests/simulation/test_engine_ray.py",
    "tests/edgefleet/test_frozen.py",
    "tests/server/drift/test_power.py",
    "tests/registry/test_signing_race.py",
    "tests/server/drift/test_rates.py",
    "tests/server/test_worker.py",
    "tests/simulation/test_tff_backend.py",
    "tests/server/test_metrics.py",
    "tests/edge_client/test_device_events.py",
    "tests/test_tls.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the files of :data:`LONGEST_FIRST` to the front, in that order (a stable sort:
    the order of the tests within a file, which some files rely on, is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
