"""The log level every EdgeFleet settings class accepts, in any case.

``EDGEFLEET_SERVER_LOG_LEVEL=warning`` and ``...=WARNING`` mean the same: the value is upper-cased
before it is checked against the names of :mod:`logging`'s levels, and stored upper-case (what
``logging.basicConfig(level=...)`` and ``Logger.setLevel`` take).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator

__all__ = ["LOG_LEVELS", "LogLevel", "LogLevelName"]

LogLevelName = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevelName)


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


#: A settings field type: one of :data:`LOG_LEVELS`, given in any case.
LogLevel = Annotated[LogLevelName, BeforeValidator(_upper)]
