"""One entry point for ``edgefleet sim run``: a run, a sweep, the TFF reference, or both.

:func:`run_any` returns the text the command prints: where the results are and the summary
(or the sweep's comparison table, or the backends side by side).
"""

from __future__ import annotations

import json

from simulation.config import Experiment


def run_any(exp: Experiment, *, compare_tff: bool = False) -> str:
    """Run ``exp`` as its ``backend`` and ``sweep`` say; ``compare_tff``: both backends."""
    from simulation.engine import run_experiment

    if compare_tff:
        from simulation.tff_backend import compare_backends

        return compare_backends(exp).render()
    if exp.backend == "tff":
        from simulation.tff_backend import run_tff

        return run_tff(exp).render()
    if exp.sweep:
        from simulation.sweep import _markdown, run_sweep

        table = run_sweep(exp, run_experiment)
        return (f"sweep of {len(table)} group(s) -> {exp.out_dir()}/sweep.html\n"
                + _markdown(table))
    res = run_experiment(exp)
    return (f"{exp.name}: {exp.rounds} rounds, {exp.clients.count} clients -> "
            f"{res.out_dir}/report.html\n" + json.dumps({**res.summary, **res.run_info},
                                                        indent=1))
