"""`fedmi credentials`: what a deployment across hosts needs, for the names the hosts use."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parent.parent


def _fedmi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedmi_flower.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_credentials_cover_the_hosts_and_chain_to_the_ca(tmp_path):
    out = tmp_path / "certs"
    done = _fedmi(
        "credentials",
        str(out),
        "--supernodes",
        "2",
        "--host",
        "superlink.example.org",
        "--host",
        "10.1.2.3",
        "--days",
        "7",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt",
        "server.key",
        "server.pem",
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    ]
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("10.1.2.3", "127.0.0.1")]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert datetime.timedelta(days=7) <= lifetime < datetime.timedelta(days=7, hours=1)
    key = serialization.load_pem_private_key((out / "server.key").read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()  # the key of the certificate
    for i in range(2):
        private = serialization.load_ssh_private_key((out / f"supernode-{i}").read_bytes(), password=None)
        public = serialization.load_ssh_public_key((out / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (out / f"supernode-{i}").stat().st_mode & 0o077 == 0  # private: this user only
    assert "supernode-1.pub" in done.stdout and "Across hosts" in done.stdout


def test_credentials_refuse_bad_requests_and_never_overwrite(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "ca.crt").write_text("someone's CA")
    for args, said in (
        ((str(tmp_path / "used"), "--supernodes", "1"), "is not empty"),
        ((str(tmp_path / "a"), "--supernodes", "0"), "--supernodes 0"),
        ((str(tmp_path / "b"), "--supernodes", "1", "--days", "0"), "--days 0"),
    ):
        done = _fedmi("credentials", *args)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "used" / "ca.crt").read_text() == "someone's CA"
