"""The Kubernetes lab's certificates and kubeconfigs: one CA, a certificate per identity.

Each identity is what the component is in a kubeadm cluster, so the real authorizers
judge it as they would there: the API server's kubelet client and the admin in
system:masters, kubelets as system:node:<name> in system:nodes (the Node authorizer
and NodeRestriction), the controller-manager and scheduler by their system names.
ECDSA P-256 keys: as good as RSA here and generated in a millisecond.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weft.files import write_atomically

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Identity:
    """A certificate's subject: CN is the user name, O the groups."""

    file: str
    common_name: str
    groups: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()  # DNS names and addresses, for serving certs


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class ClusterPKI:
    """Files under `directory`: ca.crt/ca.key, <file>.crt/<file>.key, sa.key/sa.pub."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("weft-lab-ca")
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write_atomically(self.path("ca.key"), _key_pem(key), 0o600)
        write_atomically(self.path("ca.crt"), cert.public_bytes(serialization.Encoding.PEM))
        # The service account token signing pair.
        sa = ec.generate_private_key(ec.SECP256R1())
        write_atomically(self.path("sa.key"), _key_pem(sa), 0o600)
        write_atomically(self.path("sa.pub"), sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def issue(self, identity: Identity) -> None:
        ca_key = serialization.load_pem_private_key(self.path("ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.path("ca.crt").read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(identity.common_name, identity.groups))
                   .issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        if identity.server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [_general_name(n) for n in identity.server_names]), critical=False)
        cert = (builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write_atomically(self.path(f"{identity.file}.key"), _key_pem(key), 0o600)
        write_atomically(self.path(f"{identity.file}.crt"),
                         cert.public_bytes(serialization.Encoding.PEM))

    def kubeconfig(self, path: Path, identity: Identity, server: str,
                   files_at: Path | None = None) -> Path:
        """A kubeconfig for `identity`, naming the CA and its certificate by absolute
        path: here, or in `files_at` where its reader (a node) has copies of them."""
        where = files_at or self.directory
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "weft-lab",
            "clusters": [{"name": "weft-lab", "cluster": {
                "server": server, "certificate-authority": str(where / "ca.crt")}}],
            "users": [{"name": identity.common_name, "user": {
                "client-certificate": str(where / f"{identity.file}.crt"),
                "client-key": str(where / f"{identity.file}.key")}}],
            "contexts": [{"name": "weft-lab", "context": {
                "cluster": "weft-lab", "user": identity.common_name}}]}
        write_atomically(path, yaml.safe_dump(config, sort_keys=False).encode(), 0o600)
        return path


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
