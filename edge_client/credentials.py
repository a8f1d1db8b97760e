"""The device's identity: enrolment and the credentials file.

``edgefleet agent enroll --server URL --token T`` trades a one-time enrolment token for a device id
and a device token (:func:`enroll`), and stores them in ``<data_dir>/credentials.json``:

* created with mode 0600 from the first byte (``O_CREAT | O_EXCL`` on a temporary file with that
  mode, then an atomic ``os.replace``), so the token is never readable by other users, not even
  for an instant, and a crash leaves either the old file or the new one;
* refused on load when group or others can read it (like ``ssh`` refuses a private key), because
  then the token must be considered leaked.

Enrolment also **pins** the registry's version-signing public key (``signing_key``): from then
on the agent installs only versions whose signature verifies against it, or against a newer key
it endorsed (:mod:`edgefleet.signature`). The key is trusted on first use, at enrolment — the
moment the operator hands the device its enrolment token; re-enrolling pins the key again.
"""

from __future__ import annotations

import os
import platform
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_client.errors import ConfigurationError, CredentialsError, NotEnrolledError
from edge_client.storage import atomic_write
from edgefleet.wire import SigningKeyInfo

CREDENTIALS_MODE = 0o600


class Credentials(BaseModel):
    """What enrolment gave this device.

    Parameters
    ----------
    server_url : str
        Base URL of the EdgeFleet server, e.g. ``http://10.0.0.2:8000``.
    device_id : str
        The id the server knows this device by.
    device_token : str
        Bearer token for every device request (secret).
    enrolled_at : datetime
        When enrolment happened (UTC).
    labels : dict of str to str
        The labels sent at enrolment (the server keeps the authoritative copy).
    signing_key : SigningKeyInfo or None
        The registry's version-signing key pinned at enrolment; without one no downloaded
        version is installed (re-enrol to pin it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_url: str
    device_id: str
    device_token: str = Field(repr=False)
    enrolled_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    labels: dict[str, str] = Field(default_factory=dict)
    signing_key: SigningKeyInfo | None = None

    def save(self, path: str | Path) -> None:
        """Write the credentials atomically with mode 0600."""
        atomic_write(path, self.model_dump_json(indent=2).encode(), mode=CREDENTIALS_MODE)

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """Read the credentials, refusing a file that others can read.

        Raises
        ------
        NotEnrolledError
            When the file does not exist.
        CredentialsError
            When it is readable by group/others, unreadable or malformed.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise NotEnrolledError(
                f"not enrolled: {path} does not exist (run `edgefleet agent enroll`)"
            ) from exc
        except OSError as exc:
            raise CredentialsError(f"cannot read {path}: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise CredentialsError(
                    f"{path} has mode {mode:04o}; it holds a secret and must be 0600 "
                    f"(chmod 600 {path}, and consider re-enrolling: the token may have leaked)"
                )
            data = f.read()
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise CredentialsError(f"malformed credentials file {path}: {exc}") from exc


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``["site=berlin", "line=3"]`` → ``{"site": "berlin", "line": "3"}``."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CredentialsError(f"label {item!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


def hardware_facts() -> dict[str, Any]:
    """What the server may want to know about the device (no identifiers beyond its kind)."""
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count() or 1,
    }


def enroll(
    server_url: str,
    enrollment_token: str,
    path: str | Path,
    *,
    device_id: str | None = None,
    labels: dict[str, str] | None = None,
    model: str | None = None,
    timeout_s: float = 10.0,
) -> Credentials:
    """Enrol with the server and store the resulting credentials at ``path`` (mode 0600).

    ``model`` optionally names the model this device should run (the operator may set it later).

    Raises
    ------
    UnauthorizedError
        When the server refuses the enrolment token.
    ServerUnavailableError
        When the server cannot be reached.
    """
    from edge_client.client import ServerClient
    from edgefleet.wire import EnrollRequest

    try:
        request = EnrollRequest(
            enrollment_token=enrollment_token,
            device_id=device_id,
            labels=labels or {},
            hardware=hardware_facts(),
            model=model,
        )
    except ValidationError as exc:
        raise ConfigurationError(f"invalid enrolment request: {exc}") from exc
    with ServerClient(server_url, token=None, timeout_s=timeout_s, retries=1) as client:
        answer = client.enroll(request)
    creds = Credentials(
        server_url=server_url.rstrip("/"),
        device_id=answer.device_id,
        device_token=answer.device_token,
        labels=labels or {},
        signing_key=answer.signing_key,
    )
    creds.save(path)
    return creds
