"""The inference runner (``edgefleet server runner --registry URL``): V2 inference without a
database.

A runner serves only the V2 inference routes, health and metrics (:mod:`server.runner.app`).
It learns models, versions and aliases from the registry's serving snapshot over REST
(``/api/v1/serving/models``, :mod:`edgefleet.serving`), downloads the artifacts it needs into a
local cache and checks each against its digest and the version's signature, as devices do
(:mod:`server.runner.source`), and feeds them to the server's serving table and runtime pool
(:mod:`server.inference.table`, :mod:`server.inference.pool`). It never opens a database
connection: its settings (:mod:`server.runner.settings`) have no database URL, so a request a
shadow rollout samples, whose two answers belong in the server's inference log, is sent on to
the server (:mod:`server.runner.forward`). On SIGTERM it drains (:mod:`server.runner.app`).

May import: ``server.inference``, ``server.errors``, ``server.security``, ``server.logs``,
``server.settings`` (the key rules only),
``edgefleet``, ``registry.errors``, ``fastapi``/``starlette``/``uvicorn``, ``httpx``,
``prometheus_client``.
"""
