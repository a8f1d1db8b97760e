"""``edgefleet sim``: experiments on this machine.

``edgefleet sim fleet`` runs the first whole fleet (see :mod:`simulation.fleet`): the server, an
initial plan, edge agents with their SuperNodes, a federated run, and a printed summary. Only
Typer and the standard library are imported here; the rest is imported inside the commands.
"""

from __future__ import annotations

import logging
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
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each step"),
) -> None:
    """Run a fleet on 127.0.0.1: server, initial plan, agents + SuperNodes, Flower rounds.

    Exits 1 when the federated run failed or published no new version. Leaves nothing running.
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
    try:
        config = FleetConfig(workdir=workdir, n_agents=agents, rounds=rounds, model=model,
                             alpha=alpha, shifts=shifts,  # type: ignore[arg-type]
                             strategy=strategy, selection=selection, base_epochs=base_epochs,
                             lr=lr, seed=seed, timeout_s=timeout)
    except SimulationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"fleet: {agents} agents, {rounds} rounds; work dir "
               f"{config.workdir or './var/fleet-<timestamp>'} (a few minutes)")
    report = run_fleet(config)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)
