"""``edgefleet sim``: experiments on this machine.

``edgefleet sim run EXPERIMENT.toml`` runs an experiment (or its sweep) on Flower's simulation
engine, or with ``--backend tff`` on the TensorFlow Federated reference (see
:mod:`simulation.engine`, :mod:`simulation.tff_backend`). ``edgefleet sim fleet`` runs the first
whole fleet (see :mod:`simulation.fleet`): the server, an initial plan, edge agents with their
SuperNodes, a federated run, and a printed summary. Only Typer and the standard library are
imported here; the rest is imported inside the commands.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _shifts(items: list[str], n_agents: int) -> dict[int, str] | None:
    if not items:
        return None
    if items == ["none"]:
        return {}
    out: dict[int, str] = {}
    for item in items:
        index, sep, kind = item.partition("=")
        if not sep or not index.strip().isdigit() or int(index) >= n_agents:
            raise typer.BadParameter(f"expected DEVICE=KIND with DEVICE < {n_agents}, got {item!r}",
                                     param_hint="--shift")
        out[int(index)] = kind.strip()
    return out


@app.command()
def run(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False,
                                      help="the experiment's TOML file"),
    backend: str = typer.Option("", help="flower|tff|both (default: the file's 'backend')"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default: the "
                                    "file's output.dir or var/sim/<name>)", show_default=False),
    rounds: int = typer.Option(0, min=0, help="override the number of rounds"),
    seed: int | None = typer.Option(None, help="override the seed", show_default=False),
    ray_address: str = typer.Option("", help="join this Ray cluster (HOST:PORT or 'auto')"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Run an experiment: per-round results (JSONL, CSV), plots and an HTML report.

    A sweep table in the file runs every combination and writes a comparison table (mean ± std
    over seeds). Exits 1 with a one-line message when the experiment is invalid or a run fails.
    """
    from simulation.config import load_experiment, parse_experiment
    from simulation.errors import SimulationError
    from simulation.runner import run_any

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log lines
    try:
        exp = load_experiment(experiment)
        data = exp.model_dump()
        if rounds:
            data["rounds"] = rounds
        if seed is not None:
            data["seed"] = seed
        if out is not None:
            data["output"]["dir"] = str(out)
        if ray_address:
            data["engine"]["ray_address"] = ray_address
        if no_progress:
            data["output"]["progress"] = False
        both = backend == "both"
        if backend and not both:
            data["backend"] = backend
        typer.echo(run_any(parse_experiment(data), compare_tff=both))
    except SimulationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def fleet(
    agents: int = typer.Option(4, "--agents", min=1, help="devices: agent + SuperNode each"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="federated rounds"),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="work dir (default ./var/fleet-<timestamp>)", show_default=False),
    model: str = typer.Option("digits", help="registry model name"),
    alpha: float = typer.Option(0.5, help="Dirichlet label skew (smaller: more skewed)"),
    shift: list[str] = typer.Option(
        [], "--shift", help="DEVICE=brightness|noise|contrast (repeatable; 'none' for no drift; "
                            "default: device 0 brightness, and the last of 4+ noise)"),
    strategy: str = typer.Option(
        "fedavg", help="fedavg|fedprox|fedadam|fedyogi|fedtrimmedavg|krum"),
    selection: str = typer.Option("drift", help="uniform|drift"),
    base_epochs: int = typer.Option(2, min=1, help="local epochs per round"),
    lr: float = typer.Option(0.1, help="local learning rate"),
    seed: int = typer.Option(0, help="seed of the data shares, the plan and the selection"),
    timeout: float = typer.Option(900.0, min=60, help="upper bound of the whole fleet (s)"),
    loop: bool = typer.Option(
        True, "--loop/--no-loop",
        help="the whole loop: drift injected after start, the drift controller's run, a staged "
             "rollout promoted on evidence, a broken candidate rolled back (--no-loop: devices "
             "shifted from the start and one federated run)"),
    bake: float = typer.Option(8.0, min=0, help="seconds each rollout step bakes (loop)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each step"),
) -> None:
    """Run a fleet on 127.0.0.1: server, initial plan, agents + SuperNodes, the drift
    controller's federated run, guarded rollouts (see --loop).

    Exits 1 when a stage failed (no run, nothing published, a good candidate not promoted or a
    broken one not rolled back). Leaves nothing running.
    """
    from simulation.errors import SimulationError
    from simulation.fleet import FleetConfig, run_fleet
    from simulation.partition import SHIFTS

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    shifts = _shifts(shift, agents)
    for kind in (shifts or {}).values():
        if kind not in SHIFTS:
            raise typer.BadParameter(f"unknown shift {kind!r}; one of {', '.join(SHIFTS)}",
                                     param_hint="--shift")
    if workdir is None:
        workdir = Path("var") / f"fleet-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        config = FleetConfig(workdir=workdir, n_agents=agents, rounds=rounds, model=model,
                             alpha=alpha, shifts=shifts,  # type: ignore[arg-type]
                             strategy=strategy, selection=selection, base_epochs=base_epochs,
                             lr=lr, seed=seed, timeout_s=timeout, loop=loop, bake_s=bake)
    except SimulationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"fleet: {agents} agents, {rounds} rounds; work dir {workdir} (a few minutes)")
    report = run_fleet(config)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)
