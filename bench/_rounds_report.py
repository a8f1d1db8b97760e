"""The two tables ``bench_rounds_sim.py`` prints from its children's rows.

A child's result is ``{"clients": n, "ours": [rows of each repetition], "fedavg": [...]}``, one
row a round (``_rounds_servers.py``). :func:`summarise` turns one result into the rows of both
tables for three spans (round 1, rounds 2+, all rounds): the totals (median server-side CPU a
round, its spread, the ratios ours / FedAvg) and where the CPU goes (grid, own, settle, wall);
:func:`print_tables` prints them with their legends.

The standard library and ``_common`` only: the parent process imports it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from _common import Column, print_table

Rows = list[tuple[object, ...]]
SPANS: list[tuple[str, Callable[[int], bool]]] = [
    ("round 1", lambda r: r == 0), ("rounds 2+", lambda r: r > 0), ("all rounds", lambda r: True)]


def _values(res: dict[str, Any], system: str, key: str, keep: Callable[[int], bool],
            rep: int | None = None) -> list[float]:
    """``key`` of the kept rounds of every repetition (or of repetition ``rep``) of ``system``;
    ``own`` is ``cpu - grid``."""
    reps = res[system] if rep is None else [res[system][rep]]
    return [row["cpu"] - row["grid"] if key == "own" else row[key]
            for rows in reps for r, row in enumerate(rows) if keep(r)]


def _only(j: int) -> Callable[[int], bool]:
    """Keep round ``j`` (0-based) alone."""
    return lambda r: r == j


def summarise(res: dict[str, Any]) -> tuple[Rows, Rows]:
    """The two tables' rows for one client count: round 1, rounds 2+, all rounds."""
    totals: Rows = []
    parts: Rows = []
    for label, keep in SPANS:
        def med(system: str, key: str, keep: Callable[[int], bool] = keep) -> float:
            return statistics.median(_values(res, system, key, keep))

        ours, flower = _values(res, "ours", "cpu", keep), _values(res, "fedavg", "cpu", keep)
        per_rep = [statistics.median(_values(res, "ours", "cpu", keep, i))
                   / statistics.median(_values(res, "fedavg", "cpu", keep, i))
                   for i in range(len(res["ours"]))]
        case = f"{res['clients']} clients, {label}"
        n_rounds = len(res["ours"][0])
        per_round = [statistics.median(_values(res, "ours", "cpu", _only(j)))
                     / statistics.median(_values(res, "fedavg", "cpu", _only(j)))
                     for j in range(n_rounds) if keep(j)]
        queries = max(_values(res, "ours", "queries", keep), default=0)
        totals.append((case, len(ours),
                       f"{statistics.median(ours):.3f} [{min(ours):.3f}-{max(ours):.3f}]",
                       f"{statistics.median(flower):.3f} [{min(flower):.3f}-{max(flower):.3f}]",
                       statistics.median(ours) / statistics.median(flower),
                       f"{min(per_rep):.2f}-{max(per_rep):.2f}", max(per_round), queries))
        parts.append((case, med("ours", "grid"), med("fedavg", "grid"), med("ours", "pulls"),
                      med("fedavg", "pulls"), med("ours", "own"), med("fedavg", "own"),
                      med("ours", "own") / med("fedavg", "own"), med("ours", "settle"),
                      med("fedavg", "settle"), med("ours", "settle") / med("fedavg", "settle"),
                      med("ours", "wall"), med("fedavg", "wall")))
    return totals, parts


def print_tables(totals: Rows, parts: Rows, *, rounds: int, reps: int, fraction: float,
                 fresh: bool) -> None:
    """Both tables, over every client count, with the run's settings and their legends."""
    summaries = "a new drift summary in every reply" if fresh else "3 drift summaries"
    trained = "every node trains" if fraction >= 1.0 else f"{fraction:g} of the nodes train"
    print(f"\nServer-side CPU per round (the ServerApp's thread, time.thread_time): {rounds}"
          f" rounds x {reps} repetitions, {trained}, 4,810 params, drift steering on,"
          f" {summaries}")
    print_table([Column("case", 24), Column("rounds", 6, "d"),
                 Column("ours (s) median [min-max]", 26),
                 Column("FedAvg (s) median [min-max]", 28),
                 Column("ratio", 6, ".2f", suffix="x"), Column("ratio per rep", 13),
                 Column("worst round", 11, ".2f", suffix="x"),
                 Column("queries/round", 13, ".0f")], totals)
    print("\nWhere it goes (medians, s): grid = inside push/pull/get_node_ids (LinkState);"
          "\nown = the rest of the round; settle = after the last reply (ours: validation +"
          "\nsteering weights + weighted mean; FedAvg: aggregate_train); wall = the whole round")
    print_table([Column("case", 24), Column("grid ours", 9, ".3f"),
                 Column("grid FedAvg", 11, ".3f"), Column("pulls ours", 10, ".0f"),
                 Column("pulls FedAvg", 12, ".0f"), Column("own ours", 8, ".3f"),
                 Column("own FedAvg", 10, ".3f"), Column("ratio", 6, ".2f", suffix="x"),
                 Column("settle ours", 11, ".4f"), Column("settle FedAvg", 13, ".4f"),
                 Column("ratio", 6, ".2f", suffix="x"), Column("wall ours", 9, ".2f"),
                 Column("wall FedAvg", 11, ".2f")], parts)
    print("\nratio = median ours / median FedAvg over every repetition's rounds; ratio per rep ="
          "\nthe same within each repetition (min-max); worst round = the largest of the"
          "\nper-round ratios ours / FedAvg (medians over the repetitions). No round of ours"
          "\nqueries before training; queries/round = stale nodes queried (max over rounds).")
