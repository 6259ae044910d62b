"""Development key material for a deployment on one machine: ``confide keys``.

Writes, under one output directory:

- ``ca.crt`` / ``ca.key``: a development certificate authority (keep ``ca.key`` private).
- ``server/server.crt`` / ``server/server.key``: the coordinator's TLS certificate, signed by
  the CA, with a SAN for every given host name or IP address.
- per site ``sites/<name>/``: ``auth.key`` / ``auth.pub``, the SuperNode authentication key
  pair (ECDSA P-384 in OpenSSH format: what Flower 1.39's ``--enable-supernode-auth`` needs),
  ``state/identity.key``, the site's Ed25519 identity key for secure aggregation, and a copy
  of ``ca.crt``.
- ``enrolment.json``: site name -> identity public key (read by :mod:`protocol.enrolment`).
- ``server/supernodes/<name>.pub``: the auth public keys the coordinator registers.

Real deployments replace the CA and server certificate with ones from their PKI; the site
keys are then made at each site (``confide keys --sites NAME`` there) and only the public
halves travel to the coordinator.

The coordinator's operator owns this: the development CA signs the coordinator's
certificate, and each site's folder is handed out from here (with a sample ``site.toml``,
:mod:`server.deploy_samples`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy.secagg.keys import generate_identity_key, identity_private_bytes, identity_public_bytes
from protocol.console import UsageError
from protocol.enrolment import SITE_NAME
from protocol.io import atomic_write_bytes

__all__ = ["KeySet", "KeysError", "auth_key_pair", "check_sites", "make_keys", "write_private",
           "write_public"]

_VALID_DAYS = 365


class KeysError(UsageError):
    """Bad input for key generation (a host or site name), named with its value (exit 2)."""


@dataclass(frozen=True)
class KeySet:
    """Paths of what :func:`make_keys` wrote."""

    root: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    enrolment: Path
    site_dirs: dict[str, Path]


def write_private(path: Path, data: bytes) -> None:
    """Write key material readable by the owner only."""
    atomic_write_bytes(path, data, mode=0o600)  # never readable by others, not even briefly


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate, public key or list: readable by everyone."""
    atomic_write_bytes(path, data, mode=0o644)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Confide development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", host):
                raise KeysError(f"`--hosts` entry {host!r} is neither an IP address nor a "
                                "host name") from None
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Confide development CA")).issuer_name(_name("Confide development CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                 hosts: Sequence[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def auth_key_pair() -> tuple[bytes, bytes]:
    """Generate a SuperNode auth key pair: (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def check_sites(sites: Sequence[str]) -> list[str]:
    """Validate site names (they become directory names and enrolment keys)."""
    out: list[str] = []
    for name in sites:
        if not SITE_NAME.match(name):
            raise KeysError(f"`--sites` entry {name!r} must be letters, digits, '.', '_' or '-' "
                            "(at most 63, starting with a letter or digit)")
        if name in out:
            raise KeysError(f"`--sites` names {name!r} twice")
        out.append(name)
    if not out:
        raise KeysError("`--sites` must name at least one site")
    return out


def make_keys(out: Path, *, hosts: Sequence[str], sites: Sequence[str],
              force: bool = False) -> KeySet:
    """Write a CA, the server certificate and every site's keys under ``out``."""
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise KeysError("`--hosts` must name at least one host name or IP address")
    sites = check_sites([s.strip() for s in sites if s.strip()])
    _san(hosts)  # validate before anything is written
    out = out.expanduser().resolve()
    if (out / "ca.key").exists() and not force:
        raise KeysError(f"`--out` {str(out)!r} already holds keys; pass --force to replace them")
    ca_key, ca_cert = _ca()
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    write_public(out / "ca.crt", ca_pem)
    write_private(out / "ca.key", _pem_key(ca_key))
    srv_key, srv_cert = _server_cert(ca_key, ca_cert, hosts)
    write_public(out / "server" / "server.crt", srv_cert.public_bytes(serialization.Encoding.PEM))
    write_private(out / "server" / "server.key", _pem_key(srv_key))
    write_public(out / "server" / "ca.crt", ca_pem)
    enrolment: dict[str, str] = {}
    site_dirs: dict[str, Path] = {}
    for name in sites:
        sdir = out / "sites" / name
        private, public = auth_key_pair()
        write_private(sdir / "auth.key", private)
        write_public(sdir / "auth.pub", public)
        write_public(out / "server" / "supernodes" / f"{name}.pub", public)
        write_public(sdir / "ca.crt", ca_pem)
        ident = generate_identity_key()
        (sdir / "state").mkdir(parents=True, exist_ok=True)
        os.chmod(sdir / "state", 0o700)
        write_private(sdir / "state" / "identity.key", identity_private_bytes(ident))
        enrolment[name] = identity_public_bytes(ident).hex()
        site_dirs[name] = sdir
    text = (json.dumps(enrolment, indent=2, sort_keys=True) + "\n").encode()
    write_public(out / "enrolment.json", text)
    for sdir in site_dirs.values():
        write_public(sdir / "enrolment.json", text)
    return KeySet(out, out / "ca.crt", out / "server" / "server.crt",
                  out / "server" / "server.key", out / "enrolment.json", site_dirs)

