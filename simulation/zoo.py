"""The model zoo: plans for an experiment's data, authored once and cached on disk.

A zoo plan (``mlp`` or ``convnet``, see :mod:`authoring.plans`) is built with TensorFlow in a
*child* Python process (the simulation itself never imports TensorFlow), from the training split
it is meant for (its drift reference comes from it), and kept in the cache directory under a key
of everything that determines it: the data's digest, the architecture, the batch size and the
seed. The next experiment with the same key loads it in milliseconds. A build goes to a temporary
directory that is renamed into place, so an interrupted build never leaves a half-written plan.

The cache is ``$EDGEFLEET_PLAN_CACHE`` or ``~/.cache/edgefleet/plans``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from edgefleet.datasets import Dataset
from edgefleet.errors import EdgeFleetError
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, PlanRuntime
from simulation.config import ModelConfig
from simulation.errors import ConfigError, ExperimentError

CACHE_ENV = "EDGEFLEET_PLAN_CACHE"
BUILD_TIMEOUT_S = 600

_BUILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from authoring.plans import build_plan, make_model
    spec = json.loads(sys.argv[2])
    with np.load(sys.argv[1]) as f:
        x, y = f["x"], f["y"]
    sample = tuple(spec["sample_shape"])
    model = make_model(spec["arch"], sample_shape=sample, n_classes=spec["n_classes"],
                       hidden=tuple(spec["hidden"]), filters=spec["filters"],
                       train_batch_size=spec["batch_size"], shift=spec["shift"],
                       scale=spec["scale"], seed=spec["seed"])
    build_plan(model, sys.argv[3], name=spec["name"], feature_names=spec["feature_names"],
               class_labels=spec["class_labels"], x_reference=x, y_reference=y,
               dataset=spec["dataset"])
    """
)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgefleet" / "plans")


def _spec(cfg: ModelConfig, ds: Dataset, seed: int) -> dict[str, object]:
    shift, scale = ds.suggested_preprocessing()
    if cfg.zoo == "convnet":
        if ds.image_shape is None:
            raise ConfigError(f"model.zoo='convnet' needs image data; {ds.name!r} is not")
        sample: tuple[int, ...] = ds.image_shape
    else:
        sample = (ds.n_features,)
    digest = hashlib.sha256(np.ascontiguousarray(ds.x_train).tobytes())
    digest.update(np.ascontiguousarray(ds.y_train).tobytes())
    return {"arch": cfg.zoo, "hidden": list(cfg.hidden), "filters": cfg.filters,
            "batch_size": cfg.batch_size, "seed": seed, "sample_shape": list(sample),
            "n_classes": ds.n_classes, "shift": shift, "scale": scale,
            "feature_names": ds.feature_names, "class_labels": ds.class_labels,
            "name": f"{ds.name}-{cfg.zoo}", "dataset": ds.name, "data": digest.hexdigest()}


def plan_key(cfg: ModelConfig, ds: Dataset, seed: int) -> str:
    """The cache key of the zoo plan for ``(cfg, ds, seed)``."""
    blob = json.dumps(_spec(cfg, ds, seed), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (PLAN_FILE, MANIFEST_FILE, WEIGHTS_FILE))


def zoo_plan(cfg: ModelConfig, ds: Dataset, seed: int, *, cache: Path | None = None) -> Path:
    """The plan directory of the zoo model for ``ds``: from the cache, or built and cached."""
    spec = _spec(cfg, ds, seed)
    root = cache or cache_dir()
    target = root / plan_key(cfg, ds, seed)
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        data = Path(tmp) / "train.npz"
        np.savez(data, x=ds.x_train, y=ds.y_train)
        out = Path(tmp) / "plan"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _BUILD, str(data), json.dumps(spec), str(out)],
                capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ExperimentError(f"building the {cfg.zoo} plan took over "
                                  f"{BUILD_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise ExperimentError(f"building the {cfg.zoo} plan failed (needs the 'author' "
                                  f"extra, TensorFlow):\n{proc.stderr[-3000:]}")
        try:
            out.rename(target)
        except OSError:  # another run built the same plan meanwhile
            if not _complete(target):
                shutil.rmtree(target, ignore_errors=True)
                out.rename(target)
    return target


def resolve_plan(cfg: ModelConfig, ds: Dataset, seed: int) -> Path:
    """``cfg.plan_dir`` (checked: it loads, and fits the data) or the zoo plan."""
    if not cfg.plan_dir:
        return zoo_plan(cfg, ds, seed)
    path = Path(cfg.plan_dir)
    try:
        rt = PlanRuntime.from_dir(path)
    except (EdgeFleetError, OSError) as exc:
        raise ConfigError(f"model.plan_dir {path}: {exc}") from exc
    m = rt.manifest
    if int(np.prod(m.input.sample_shape)) != ds.n_features:
        raise ConfigError(f"model.plan_dir {path} takes {list(m.input.sample_shape)} features, "
                          f"the data has {ds.n_features}")
    if m.output.n_classes < ds.n_classes:
        raise ConfigError(f"model.plan_dir {path} has {m.output.n_classes} classes, the data "
                          f"{ds.n_classes}")
    return path
