"""The ``edgefleet`` command: one subcommand per deployable.

Each deployable keeps its commands in its own ``cli.py``, which imports only Typer and the standard
library at module level (heavy imports happen inside the commands), so ``edgefleet agent ...`` on a
device never loads the server's or the author's dependencies.
"""

from __future__ import annotations

import typer

from aggregation.cli import app as fl_app
from authoring.cli import app as model_app
from edge_client.cli import app as agent_app
from edgefleet_cli.audit import app as audit_app
from edgefleet_cli.registry import app as registry_app
from edgefleet_cli.rollout import app as rollout_app
from server.cli import app as server_app
from simulation.cli import app as sim_app

app = typer.Typer(
    name="edgefleet",
    help="EdgeFleet: federated hybrid serving for fleets of edge devices.",
    no_args_is_help=True,
    add_completion=False,
    # Never print local variables in a traceback: they may hold keys, tokens or database URLs.
    pretty_exceptions_show_locals=False,
)
app.add_typer(model_app, name="model", help="Author, convert, inspect and try model plans.")
app.add_typer(server_app, name="server", help="Run the registry and inference server.")
app.add_typer(agent_app, name="agent", help="Enrol and run the edge agent on a device.")
app.add_typer(fl_app, name="fl", help="Run federated rounds (Flower ServerApp, controller).")
app.add_typer(sim_app, name="sim", help="Run simulations with virtual clients.")
app.add_typer(registry_app, name="registry", help="Inspect a running server's registry and log.")
app.add_typer(rollout_app, name="rollout",
              help="Start, watch, approve and abort guarded rollouts on a running server.")
app.add_typer(audit_app, name="audit", help="A running server's audit trail: list, verify, export.")


@app.command()
def version() -> None:
    """Print EdgeFleet's version."""
    from edgefleet import __version__

    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
