"""Credentials: named keys, constant-time comparison, and who is calling.

Three kinds of secret come from the settings: admin keys (registry writes), enrolment tokens
(devices trading one for their own token) and inference keys (applications). Device tokens are
checked against the registry (:func:`registry.devices.authenticate`). Every comparison of a
presented secret uses :func:`hmac.compare_digest` against *every* configured key, so the time
taken says nothing about which key, or which prefix, came close.

:class:`TokenCache` remembers successful device-token checks for the V2 hot path, keyed by the
token's sha256, until it is emptied (the serving table empties it when the database's
``credentials`` generation changes: a revoked or replaced token is refused within the table's
refresh bound, see :mod:`server.inference.table`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from registry.models import Device

__all__ = ["Caller", "NamedKey", "TokenCache", "match_key", "parse_keys"]

_NAMED = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]{0,63}):(.+)$")


@dataclass(frozen=True)
class NamedKey:
    name: str
    secret: bytes


def parse_keys(keys: Sequence[SecretStr], kind: str) -> list[NamedKey]:
    """``name:secret`` entries keep their name; bare secrets are named ``kind-<sha256[:8]>``."""
    out = []
    for key in keys:
        value = key.get_secret_value()
        match = _NAMED.match(value)
        if match:
            out.append(NamedKey(match.group(1), match.group(2).encode()))
        else:
            digest = hashlib.sha256(value.encode()).hexdigest()[:8]
            out.append(NamedKey(f"{kind}-{digest}", value.encode()))
    return out


def match_key(presented: str, keys: Sequence[NamedKey]) -> NamedKey | None:
    """The key equal to ``presented`` (compared in constant time with every key), or None."""
    candidate = presented.encode()
    found = None
    for key in keys:
        if hmac.compare_digest(candidate, key.secret):
            found = key
    return found


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the operator (admin key), a device, an application, or nobody."""

    kind: Literal["admin", "device", "app", "runner", "anonymous"]
    name: str
    device: Device | None = None

    @property
    def label(self) -> str:
        """``kind:name``: what logs and audit trails record."""
        return f"{self.kind}:{self.name}"


ANONYMOUS = Caller("anonymous", "-")


class TokenCache:
    """Device callers by their token's sha256, kept until :meth:`clear` (at most ``max_entries``).

    :meth:`put` takes the :attr:`epoch` read *before* the database check: a check that started
    before a :meth:`clear` may predate the change that caused it, so it is not kept.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.epoch = 0
        self._callers: dict[bytes, Caller] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Caller | None:
        return self._callers.get(self._key(token))

    def put(self, token: str, caller: Caller, epoch: int) -> None:
        with self._lock:
            if epoch == self.epoch and len(self._callers) < self.max_entries:
                self._callers[self._key(token)] = caller

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._callers = {}
