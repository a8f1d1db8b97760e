"""Benchmark: the edge agent's memory and its local predict latency beside a bare interpreter.

Prints, in one run:

* the process's resident memory (``VmRSS`` from ``/proc/self/status``) at each stage: the bare
  interpreter, after importing the agent, with an agent but no model, with the model loaded, and
  after serving requests (``VmHWM``, the peak, too);
* the median and p99 latency of a single-sample prediction through each layer, with the ratio
  to the bare interpreter call:

  - ``raw signature runner``: the TFLite interpreter's ``infer`` signature runner, called
    directly (what any TFLite application would do);
  - ``PlanRuntime.predict``: plus input validation and the lock (edgefleet's runtime);
  - ``Agent.predict``: plus routing, drift accumulation, counters and latency sampling;
  - ``local HTTP (V2 JSON)``: plus a keep-alive HTTP round trip to the agent's
    ``/v2/models/{m}/infer`` endpoint on 127.0.0.1 with V2 JSON encoding.

The plan is the digits MLP (64 → 64 ReLU → 10), built in a child process (TensorFlow never loads
here, so the memory figures are the agent's own) unless ``--plan-dir`` names one.

Run: ``.venv/bin/python bench/bench_agent.py [--plan-dir DIR] [--interpreter auto] [--seconds 1]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _common import Column, median_p99, plan_dir_or_build, print_table


def memory_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan-dir", type=Path, default=None)
    parser.add_argument("--interpreter", default="auto")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    memory: list[tuple[str, dict[str, int]]] = [("bare interpreter", memory_kib())]
    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = plan_dir_or_build(args.plan_dir, Path(tmp))

        import httpx
        import numpy as np

        from edge_client import Agent, AgentSettings, LocalServer
        from edgefleet.interpreters import interpreter_class
        from edgefleet.plan import PlanManifest

        memory.append(("agent imported", memory_kib()))
        settings = AgentSettings(data_dir=Path(tmp) / "agent", interpreter=args.interpreter,
                                 http_port=-1)
        agent = Agent(settings)
        memory.append(("agent, no model", memory_kib()))
        manifest = PlanManifest.load(plan_dir / "manifest.json")
        agent.models.install_dir(plan_dir, manifest.name, 1)
        active = agent.models.active
        assert active is not None
        memory.append(("agent + model loaded", memory_kib()))

        rng = np.random.default_rng(0)
        x1 = rng.uniform(0, 16, size=(1, 64)).astype(np.float32)
        name, cls = interpreter_class(active.runtime.interpreter_name)
        raw = cls(model_content=(plan_dir / "plan.tflite").read_bytes())
        runner = raw.get_signature_runner("infer")
        input_name = manifest.input.name
        server = LocalServer(agent, port=0).start()
        client = httpx.Client(base_url=server.url, timeout=10)
        body = {"inputs": [{"name": input_name, "shape": [1, 64], "datatype": "FP32",
                            "data": x1.reshape(-1).tolist()}]}
        url = f"/v2/models/{manifest.name}/infer"
        assert client.post(url, json=body).json()["parameters"]["path"] == "local"

        rows = [
            ("raw signature runner", lambda: runner(**{input_name: x1})),
            ("PlanRuntime.predict", lambda: active.runtime.predict(x1)),
            ("Agent.predict", lambda: agent.predict(x1)),
            ("local HTTP (V2 JSON)", lambda: client.post(url, json=body)),
        ]
        results = [(label, *median_p99(fn, args.seconds)) for label, fn in rows]
        memory.append(("after serving", memory_kib()))
        client.close()
        server.stop()
        agent.close()

    print(f"edge agent benchmark — digits MLP plan, interpreter {name}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    loaded = memory[3][1]["VmRSS"] - memory[2][1]["VmRSS"]
    print_table(
        [Column("stage", 24), Column("RSS (MiB)", 10, ".1f"), Column("peak (MiB)", 11, ".1f")],
        [
            *((label, m["VmRSS"] / 1024, m["VmHWM"] / 1024) for label, m in memory),
            ("(model load adds)", loaded / 1024, ""),
        ],
    )
    print()
    base = results[0][1]
    print_table(
        [
            Column("single-sample predict", 24),
            Column("median (µs)", 12, ".1f"),
            Column("p99 (µs)", 10, ".1f"),
            Column("× raw", 7, ".1f"),
        ],
        [(label, med * 1e6, p99 * 1e6, med / base) for label, med, p99 in results],
    )


if __name__ == "__main__":
    main()
