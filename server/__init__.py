"""The central server: FastAPI routes for the registry, devices, telemetry, drift and V2 inference.

May import: ``registry``, the shared ``edgefleet`` core, fastapi (starlette, uvicorn), sqlmodel,
alembic, scipy, prometheus_client, pyarrow, redis, nats, httpx (``runner`` only; the README's
package table lists them; ``tests/test_imports.py`` checks it). It is the only package that
translates exceptions into HTTP status codes (:mod:`server.errors`).

Modules
-------
``main``        :func:`create_app` (the application factory; ``uvicorn server.main:create_app
                --factory``)
``settings``    :class:`ServerSettings` (``EDGEFLEET_SERVER_*`` environment variables or a file)
``deps``        sessions, settings and callers as FastAPI dependencies
``security``    named keys, constant-time comparison, :class:`Caller`
``api``         one router per resource under ``api/routes``
``inference``   the Open Inference Protocol (V2): the hot path's serving table, micro-batcher
                and interpreter pool, and :class:`InferenceService`; the codec is the core's
                :mod:`edgefleet.v2`
``drift``       drift statistics and fleet reports (pure functions)
``fastpath``    V2 inference in front of the middleware stack   ``proxy``  trusted proxies
``middleware``  request ids, access log, body limits    ``errors``  exceptions → HTTP
``logs``        the log writer thread    ``log_lines``  JSON lines    ``log_process``  their child
``child``       a child process over a socket pair (the logs' children)
``cli``         ``edgefleet server``                     ``bootstrap``  publish without HTTP
``serve``       start-up checks, then uvicorn           ``workers``    N workers, a socket each
``metrics``     Prometheus metrics                      ``scrubber``   signing key, artifact scrub
``dashboard``   the operator's page (static assets, overview data)
``precompute``  batch scoring into the prediction store ``worker``     model-on-demand workers
``runner``      the inference runner: V2 from models pulled over REST, no database
"""
