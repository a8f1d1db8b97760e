"""HTTP routes: one router per resource under ``routes/``, assembled by :mod:`server.api.router`."""
