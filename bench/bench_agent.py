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
    ``/v2/models/{m}/infer`` endpoint on 127.0.0.1 with V2 JSON encoding;
  - ``local HTTP (V2 binary)``: the same with the binary tensor data extension both ways (the
    input as 256 raw bytes, the outputs as binary, as ``tritonclient`` sends by default);

* beside them, the floor of that HTTP stack: a bare echo server (the standard library's
  ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, ``TCP_NODELAY``, the same response buffering as
  the agent's endpoint) that reads the same V2 JSON body and sends it back, with the ratio of
  each HTTP row to it. Every HTTP row uses the same client: one keep-alive
  ``http.client.HTTPConnection`` (the standard library's, so the client adds little of its own)
  in a child process, as an application on the device would be (a client thread in the
  servers' process would contend with them for the GIL); the three are interleaved in ten
  rounds, so that the machine's load weighs on each alike. ``server CPU/req`` is the serving
  process's CPU time (``/proc``, clock ticks summed over the rounds) per request.

The plan is the digits MLP (64 → 64 ReLU → 10), built in a child process (TensorFlow never loads
here, so the memory figures are the agent's own) unless ``--plan-dir`` names one.

Run: ``.venv/bin/python bench/bench_agent.py [--plan-dir DIR] [--interpreter auto] [--seconds 1]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import ROOT, Column, median_p99, plan_dir_or_build, print_table


def memory_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class EchoHandler(BaseHTTPRequestHandler):
    """Reads a request body and sends it back (the HTTP stack's own cost, nothing else)."""

    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # as edge_client.http_api: one write per response

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def poster(port: int, path: str, body: bytes, headers: dict[str, str]
           ) -> tuple[Callable[[], bytes], http.client.HTTPConnection]:
    """A keep-alive POST of ``body`` to 127.0.0.1:``port`` (returns the response body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post() -> bytes:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {data[:200]!r}")
        return data

    return post, conn


_CLIENT = """\
import json, os, sys, time
from bench_agent import poster
from _common import cpu_seconds
targets, seconds, rounds = json.loads(sys.stdin.read()), float(sys.argv[1]), int(sys.argv[2])
posts = [poster(t["port"], t["path"], bytes.fromhex(t["body"]), t["headers"])[0]
         for t in targets]
for post in posts:  # warm-up
    for _ in range(20):
        post()
times = [[] for _ in targets]
cpu = [0.0 for _ in targets]
for _ in range(rounds):  # interleaved: a load spike on the machine hits every target alike
    for k, post in enumerate(posts):
        before, deadline = cpu_seconds(os.getppid()), time.perf_counter() + seconds / rounds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            post()
            times[k].append(time.perf_counter() - start)
        cpu[k] += cpu_seconds(os.getppid()) - before
out = []
for k, samples in enumerate(times):
    samples.sort()
    out.append([samples[len(samples) // 2], samples[int(len(samples) * 0.99)],
                cpu[k] / len(samples)])
print(json.dumps(out))
"""


def http_rows(targets: list[dict[str, Any]], seconds: float, rounds: int = 10
              ) -> list[tuple[str, float, float, float]]:
    """Time each target's POST (``label``, ``port``, ``path``, ``body``, ``headers``) from a
    child process, the targets interleaved in ``rounds`` rounds of ``seconds / rounds`` each:
    ``(label, median s, p99 s, the serving process's CPU s per request)`` each (the servers
    run in this process; nothing else does while the child runs)."""
    spec = json.dumps([{**t, "body": t["body"].hex()} for t in targets])
    proc = subprocess.run([sys.executable, "-c", _CLIENT, str(seconds), str(rounds)],
                          input=spec, text=True, capture_output=True, cwd=ROOT / "bench",
                          timeout=600, check=False)
    if proc.returncode != 0:
        sys.exit(f"the HTTP client failed:\n{proc.stderr[-3000:]}")
    return [(t["label"], med, p99, cpu)
            for t, (med, p99, cpu) in zip(targets, json.loads(proc.stdout), strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan-dir", type=Path, default=None)
    parser.add_argument("--interpreter", default="auto")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    memory: list[tuple[str, dict[str, int]]] = [("bare interpreter", memory_kib())]
    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = plan_dir_or_build(args.plan_dir, Path(tmp))

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
        echo = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, args=(0.1,), daemon=True).start()
        body = json.dumps({"inputs": [{"name": input_name, "shape": [1, 64], "datatype": "FP32",
                                       "data": x1.reshape(-1).tolist()}]}).encode()
        head = json.dumps({"inputs": [{"name": input_name, "shape": [1, 64], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x1.nbytes}}],
                           "parameters": {"binary_data_output": True}}).encode()
        url = f"/v2/models/{manifest.name}/infer"
        json_headers = {"Content-Type": "application/json"}
        binary_headers = {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(head))}
        post_json, conn = poster(server.port, url, body, json_headers)
        assert json.loads(post_json())["parameters"]["path"] == "local"
        conn.close()

        rows = [
            ("raw signature runner", lambda: runner(**{input_name: x1})),
            ("PlanRuntime.predict", lambda: active.runtime.predict(x1)),
            ("Agent.predict", lambda: agent.predict(x1)),
        ]
        results: list[tuple[str, float, float, float | None]] = [
            (label, *median_p99(fn, args.seconds), None) for label, fn in rows]
        results += http_rows([
            {"label": "bare HTTP echo", "port": echo.server_address[1], "path": url,
             "body": body, "headers": json_headers},
            {"label": "local HTTP (V2 JSON)", "port": server.port, "path": url, "body": body,
             "headers": json_headers},
            {"label": "local HTTP (V2 binary)", "port": server.port, "path": url,
             "body": head + x1.tobytes(), "headers": binary_headers},
        ], args.seconds)
        memory.append(("after serving", memory_kib()))
        echo.shutdown()
        echo.server_close()
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
    echo_med, echo_cpu = next((med, cpu) for label, med, _, cpu in results
                              if label == "bare HTTP echo")
    print_table(
        [
            Column("single-sample predict", 24),
            Column("median (µs)", 12, ".1f"),
            Column("p99 (µs)", 10, ".1f"),
            Column("× raw", 7, ".1f"),
            Column("× echo", 7, ".2f"),
            Column("server CPU/req (µs)", 20, ".1f"),
            Column("CPU × echo", 11, ".2f"),
        ],
        [(label, med * 1e6, p99 * 1e6, med / base,
          "" if cpu is None else med / echo_med,
          "" if cpu is None else cpu * 1e6,
          "" if cpu is None else cpu / echo_cpu)
         for label, med, p99, cpu in results],
    )
    print("\n× echo: median round trip over the bare echo's; server CPU/req: CPU time of the "
          "serving process per request (HTTP rows interleaved, see the module notes).")


if __name__ == "__main__":
    main()
