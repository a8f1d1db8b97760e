"""Credentials: named keys, constant-time comparison, and who is calling.

Three kinds of secret come from the settings: admin keys (registry writes), enrolment tokens
(devices trading one for their own token) and inference keys (applications). Device tokens are
checked against the registry (:func:`registry.devices.authenticate`). Every comparison of a
presented secret uses :func:`hmac.compare_digest` against *every* configured key, so the time
taken says nothing about which key, or which prefix, came close.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from registry.models import Device

__all__ = ["Caller", "NamedKey", "match_key", "parse_keys"]

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

    kind: Literal["admin", "device", "app", "anonymous"]
    name: str
    device: Device | None = None

    @property
    def label(self) -> str:
        """``kind:name``: what logs and audit trails record."""
        return f"{self.kind}:{self.name}"


ANONYMOUS = Caller("anonymous", "-")
