"""The ``edgefleet`` command, above every deployable: one subcommand per deployable.

Owns
    * ``edgefleet_cli.main``      the Typer root ``app`` (the ``edgefleet`` console script), which
                                  dispatches to each deployable's own ``cli`` module;
    * ``edgefleet_cli.registry``  ``edgefleet registry ...``, the operator's CLI over the server's
                                  REST API (httpx, imported inside the commands);
    * ``edgefleet_cli.rollout``   ``edgefleet rollout ...``, guarded rollouts over the same API;
    * ``edgefleet_cli.audit``     ``edgefleet audit ...``, the audit trail, and model cards;
    * ``edgefleet_cli.remote``    what those admin commands share: the server's URL and admin key,
                                  and the one-line errors of an unreachable or refusing server.

May import: each deployable's ``cli`` module (``authoring``, ``server``, ``edge_client``,
``aggregation``, ``simulation``), the shared ``edgefleet`` core, and httpx (lazily). Nothing
imports it: it sits at the top of the house, so the core never depends on the deployables.
"""
