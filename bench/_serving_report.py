"""The table and the ratios ``bench_serving.py`` prints: one row per model and target, one column
per concurrency, then the in-process ceiling and the issue's ratios at concurrency 32.
"""

from __future__ import annotations

import argparse
import os

from _serving_wrk import Cell

MODELS, TARGETS = ("tiny", "heavy"), ("floor", "w1", "w2")
LABELS = {"floor": "floor (bare FastAPI)", "w1": "ours --workers 1", "w2": "ours --workers 2"}
Cells = dict[str, dict[int, Cell]]


def report(args: argparse.Namespace, cells: dict[str, Cells],
           ceilings: dict[tuple[str, int], Cell]) -> None:
    cs = args.concurrency
    runs = f", median of {args.repeat} runs" if args.repeat > 1 else ""
    print(f"\nV2 serving, wrk -t1 keep-alive on 127.0.0.1, {args.duration:g} s per cell{runs}, "
          f"{os.cpu_count()} cores; req/s, p50/p99 ms, generator CPU (cores), server CPU "
          "per request (ms, all threads and workers), errors")
    head = f"{'model':6} {'target':22}" + "".join(f" | c={c:<33}" for c in cs)
    print(head)
    print("-" * len(head))
    for model in args.models:
        for target in args.targets:
            line = f"{model:6} {LABELS[target]:22}"
            for c in cs:
                k = cells[target][model][c]
                line += (f" | {k.rps:7.0f} {k.p50_ms:6.2f}/{k.p99_ms:6.2f} {k.gen_cores:4.2f}"
                         f" {k.server_ms:5.3f}{'' if not k.errors else f' E{k.errors}':>4}")
            print(line)
    print("\nin-process ceiling (the serving copy's FrozenRuntime.predict in this process; "
          "CPU: the calling thread's, per call)")
    for (model, batch), k in ceilings.items():
        print(f"{model:6} batch {batch:<3} {k.rps:9.0f} calls/s {k.rps * batch:10.0f} samples/s  "
              f"p50 {k.p50_ms:.3f} ms  p99 {k.p99_ms:.3f} ms  CPU {k.server_ms:.3f} ms")
    c = 32 if 32 in cs else cs[-1]
    print(f"\nratios at c={c}:")
    for line in ratios(cells, ceilings, c):
        print(f"  {line}")


def ratios(cells: dict[str, Cells], ceilings: dict[tuple[str, int], Cell], c: int
           ) -> list[str]:
    """The issue's ratios at concurrency ``c``, for the cells that were measured."""
    def cell(target: str, model: str) -> Cell | None:
        return cells.get(target, {}).get(model, {}).get(c)

    lines: list[str] = []
    t_ours, t_floor, t_two = cell("w1", "tiny"), cell("floor", "tiny"), cell("w2", "tiny")
    if t_ours is not None and t_floor is not None:
        lines.append(
            f"tiny: ours/floor req/s {t_ours.rps / t_floor.rps:.2f} (target >= 0.75); p99 "
            f"ours/floor {t_ours.p99_ms / t_floor.p99_ms:.2f} (target <= 2); server CPU per "
            f"request ours/floor {t_ours.server_ms / max(t_floor.server_ms, 1e-9):.2f}")
    h_ceil = ceilings.get(("heavy", 32))
    for target in ("w1", "w2"):
        h_ours = cell(target, "heavy")
        if h_ours is not None and h_ceil is not None:
            lines.append(
                f"heavy {LABELS[target].removeprefix('ours ')}: ours samples/s / ceiling "
                f"batch-32 samples/s {h_ours.rps / (h_ceil.rps * 32):.2f} (target >= 0.45); "
                f"p99 {h_ours.p99_ms:.1f} ms (target <= 25)")
    if t_ours is not None and t_two is not None:
        lines.append(f"tiny --workers 2 / --workers 1 req/s {t_two.rps / t_ours.rps:.2f} "
                     f"(target >= 1.6; generator used {t_two.gen_cores:.2f} of the cores)")
    return lines
