#!/usr/bin/env python3
"""Generate the TLS material of a deployment: a private CA, server certificates signed by it, and
the ECDSA key pairs Flower's SuperNodes authenticate with.

    python scripts/certs.py OUT_DIR [--server-name NAME ...] [--node NAME ...] [--client NAME ...]

writes into ``OUT_DIR`` (kept when already there, so re-running adds what is missing; ``--force``
replaces everything):

``ca.pem``, ``ca.key``                  the deployment's CA (ECDSA P-256); clients trust ca.pem
``server.pem``, ``server.key``          the EdgeFleet server / load balancer certificate
``superlink.pem``, ``superlink.key``    the Flower SuperLink certificate
``supernodes/<node>``, ``<node>.pub``   one SuperNode key pair each (ECDSA P-384, OpenSSH
                                        format, as ``flower-supernode
                                        --auth-supernode-private-key`` and ``flwr supernode
                                        register`` read them)
``clients/<name>.pem``, ``<name>.key``  ``--client`` certificates, for a server that requires
                                        them (``EDGEFLEET_SERVER_SSL_CA_CERTS``)

Both certificates name ``localhost`` and ``127.0.0.1`` besides the ``--server-name`` /
``--superlink-name`` host names (the service names of ``docker-compose.yml`` by default).
Private keys are written with mode 0600. Needs only ``cryptography`` (a dependency of flwr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_NAMES = ("lb", "server-1", "server-2", "server")
DEFAULT_SUPERLINK_NAMES = ("superlink",)
LOCAL = ("localhost", "127.0.0.1")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, openssh: bool = False) -> None:
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"error: {path} is not an EC private key")
    return key


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """``ca.pem``/``ca.key`` in ``out`` (created when missing)."""
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("EdgeFleet deployment CA"))
        .issuer_name(_name("EdgeFleet deployment CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_leaf(out: Path, stem: str, names: list[str], ca: x509.Certificate,
              ca_key: ec.EllipticCurvePrivateKey, days: int, *, client: bool = False) -> None:
    """``<stem>.pem``/``<stem>.key``: a server (or, with ``client``, a client) certificate for
    ``names`` signed by the CA."""
    if (out / f"{stem}.pem").exists() and (out / f"{stem}.key").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                              else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(out / f"{stem}.key", key)
    (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_node_key(out: Path, node: str) -> Path:
    """``supernodes/<node>`` (OpenSSH private key) and ``<node>.pub``; returns the .pub path."""
    private = out / "supernodes" / node
    public = private.with_suffix(".pub")
    if private.exists() and public.exists():
        return public
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(private, key, openssh=True)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH)
                       + f" {node}\n".encode())
    return public


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write into")
    parser.add_argument("--server-name", action="append", default=None,
                        help="host name of the server certificate (repeatable)")
    parser.add_argument("--superlink-name", action="append", default=None,
                        help="host name of the SuperLink certificate (default superlink)")
    parser.add_argument("--node", action="append", default=[], help="SuperNode key pair to make")
    parser.add_argument("--client", action="append", default=[],
                        help="client certificate clients/<name>.pem for servers that require "
                             "one (EDGEFLEET_SERVER_SSL_CA_CERTS)")
    parser.add_argument("--days", type=int, default=825, help="validity (default 825 days)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.force:
        for path in [*out.glob("*.pem"), *out.glob("*.key"), *out.glob("supernodes/*"),
                     *out.glob("clients/*")]:
            path.unlink()
    ca, ca_key = make_ca(out, args.days)
    make_leaf(out, "server", [*(args.server_name or DEFAULT_SERVER_NAMES), *LOCAL], ca, ca_key,
              args.days)
    make_leaf(out, "superlink", [*(args.superlink_name or DEFAULT_SUPERLINK_NAMES), *LOCAL],
              ca, ca_key, args.days)
    for node in args.node:
        make_node_key(out, node)
    for name in args.client:
        (out / "clients").mkdir(exist_ok=True)
        make_leaf(out / "clients", name, [name], ca, ca_key, args.days, client=True)
    print(f"TLS material in {out}: ca.pem, server.pem, superlink.pem"
          + (f", SuperNode keys {', '.join(args.node)}" if args.node else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
