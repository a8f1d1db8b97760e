"""The ``edgefleet`` command, above every deployable: one subcommand per deployable.

Owns
    * ``edgefleet_cli.main``  the Typer root ``app`` (the ``edgefleet`` console script), which only
                              dispatches to each deployable's own ``cli`` module.

May import: each deployable's ``cli`` module (``authoring``, ``server``, ``edge_client``,
``aggregation``, ``simulation``) and the shared ``edgefleet`` core. Nothing imports it: it sits at
the top of the house, so the core never depends on the deployables.
"""
