"""Credentials for a secure deployment: a CA, the SuperLink's certificate, one key pair per SuperNode.

Flower's deployment runtime secures its links with TLS (the SuperLink's
``--ssl-*`` files, the SuperNodes' and the CLI's ``root-certificates``) and admits
only registered SuperNodes when the SuperLink runs with ``--enable-supernode-auth``
(each SuperNode signs with its private key; its public key is registered with
``flwr supernode register``). :func:`make_credentials` writes all of it with the
``cryptography`` package (which Flower itself depends on): a self-signed CA valid
for a day (``fedmi deploy-local``'s throwaway ones) or longer (``fedmi credentials``, for
hosts), a server certificate for ``127.0.0.1``, ``localhost`` and the given hosts signed by it, and
ECDSA P-384 key pairs in OpenSSH format, the format Flower reads (the one
``ssh-keygen -t ecdsa -b 384`` writes).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALWAYS_COVERED = ("localhost", "127.0.0.1")
"""Names every SuperLink certificate covers: the SuperLink's own SuperExec connects over loopback."""

VALID_FOR = datetime.timedelta(days=1)
"""How long the throwaway certificates stay valid: one local deployment's lifetime, with margin."""


@dataclass(frozen=True)
class Credentials:
    """Paths of one deployment's credentials."""

    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    supernode_keys: tuple[Path, ...]
    """Private keys (OpenSSH format); each public key is beside it with ``.pub`` added."""

    def public_key(self, i: int) -> Path:
        """SuperNode ``i``'s public key, the file ``flwr supernode register`` takes."""
        return self.supernode_keys[i].with_name(self.supernode_keys[i].name + ".pub")


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)  # private keys and certificates: this user only


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_key_pair(private_path: Path) -> Path:
    """Write a fresh ECDSA P-384 key pair in OpenSSH format: ``private_path`` and ``private_path.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public = private_path.with_name(private_path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return public


def _certificate(
    subject: str,
    issuer: x509.Name | None,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
    valid_for: datetime.timedelta,
) -> x509.Certificate:
    """A certificate for ``key`` valid from a few minutes ago for ``valid_for``, signed by ``signer``.

    ``issuer`` None makes it self-signed (the CA); ``extensions`` are ``(extension, critical)``.
    """
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA384())


def _subject_alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_credentials(
    folder: str | Path,
    num_supernodes: int,
    hosts: Sequence[str] = (),
    valid_for: datetime.timedelta = VALID_FOR,
) -> Credentials:
    """Write a CA, the SuperLink's certificate and ``num_supernodes`` key pairs into ``folder``.

    Parameters
    ----------
    folder : str | Path
        Where to write ``ca.crt``, ``server.pem``, ``server.key`` and ``supernode-<i>``
        (private) with ``supernode-<i>.pub``.
    num_supernodes : int
        Key pairs to make, one per SuperNode.
    hosts : sequence of str
        Names (or IP addresses) by which SuperNodes and ``flwr`` reach the SuperLink,
        beside ``localhost`` and ``127.0.0.1``, which the certificate always covers: the
        SuperLink's own SuperExec connects over loopback.
    valid_for : datetime.timedelta
        How long the certificates stay valid.
    """
    if num_supernodes < 0:
        raise ValueError(f"num_supernodes = {num_supernodes}; it cannot be negative")
    if valid_for <= datetime.timedelta(0):
        raise ValueError(f"valid_for = {valid_for}; certificates must be valid for some time")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    signs_certificates = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    ca = _certificate(
        "fedmi-flower local deployment CA",
        None,
        ca_key,
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (signs_certificates, True)],
        valid_for,
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    # The SuperLink's own SuperExec reaches it over loopback; SuperNodes and flwr by ``hosts``.
    covered = list(dict.fromkeys([*hosts, *ALWAYS_COVERED]))
    names = x509.SubjectAlternativeName([_subject_alternative_name(h) for h in covered])
    server = _certificate(
        covered[0],
        ca.subject,
        server_key,
        ca_key,
        [
            (names, False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
        valid_for,
    )
    ca_path, server_path, key_path = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    _write(ca_path, ca.public_bytes(serialization.Encoding.PEM))
    _write(server_path, server.public_bytes(serialization.Encoding.PEM))
    _write(
        key_path,
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    )
    keys = tuple(folder / f"supernode-{i}" for i in range(num_supernodes))
    for key in keys:
        write_key_pair(key)
    return Credentials(ca_path, server_path, key_path, keys)
