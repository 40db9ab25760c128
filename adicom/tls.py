"""TLS for associations: contexts after the DICOM secure transport profiles.

DICOM runs TLS under the upper layer unchanged (PS3.15 B.1); by convention
on port 2762. The contexts built here follow the Non-Downgrading BCP 195 TLS
Secure Transport Connection Profile (PS3.15 B.9, after IETF BCP 195):

* TLS 1.2 or later, never an older version (no downgrade);
* for TLS 1.2, forward-secret AEAD cipher suites only (ECDHE or DHE with
  AES-GCM or ChaCha20-Poly1305); TLS 1.3 suites are all of that kind;
* no TLS compression, no renegotiation;
* the peer's certificate verified against the CA certificates given, in
  both directions when the server asks for client certificates ("mutual"
  authentication, the profile's node authentication).

DICOM nodes are usually addressed by IP and identified by AE title, so the
client does not check the server's host name unless asked to
(``check_hostname=True``); the certificate chain is always checked unless
``verify=False``, which exists for tests and says so in the log.

TLS runs on asyncio's own implementation (memory BIOs driven by the event
loop): no thread is involved.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DICOM_TLS_PORT",
    "TlsInfo",
    "client_context",
    "describe_tls_failure",
    "server_context",
    "tls_info",
]

log = logging.getLogger("adicom")

#: The port IANA registered for DICOM over TLS ("dicom-tls").
DICOM_TLS_PORT = 2762

#: TLS 1.2 cipher suites of the profile (OpenSSL names): forward secrecy and
#: authenticated encryption only. TLS 1.3 suites are configured apart by
#: OpenSSL and all qualify.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

Path = str | os.PathLike[str]


def _files(*paths: Path | None) -> None:
    """Name the missing file (OpenSSL's own error for it names none)."""
    for path in paths:
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(path))


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def client_context(
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    verify: bool = True,
    check_hostname: bool = False,
) -> ssl.SSLContext:
    """A context for associations we request over TLS.

    ``ca``: the CA certificates (PEM file) that the server's certificate must
    chain to (default: the system's). ``cert``/``key``: our certificate and
    private key, for a server that asks for client certificates. ``verify``
    False accepts any server certificate: for tests only, it is logged.
    """
    _files(ca, cert, key)
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if verify:
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if ca is not None:
            context.load_verify_locations(cafile=os.fspath(ca))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        log.warning("TLS without verifying the server's certificate: anyone can pose as it")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    elif key is not None:
        raise ValueError("a TLS private key without its certificate")
    return context


def server_context(
    *,
    cert: Path,
    key: Path | None = None,
    ca: Path | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A context for a server (``Server(ssl=...)``, ``adicom serve --tls-cert``).

    ``cert``/``key``: the server's certificate chain and private key (PEM;
    the key may be in ``cert``). ``ca``: the CA certificates client
    certificates must chain to; with ``require_client_cert`` a client
    without a valid certificate fails the handshake (mutual authentication),
    otherwise a certificate is asked for and checked when one is sent.
    """
    _files(cert, key, ca)
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    if ca is not None:
        context.load_verify_locations(cafile=os.fspath(ca))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("client certificates are required, but no CA to check them against")
    return context


class TlsInfo:
    """What TLS says of one connection: version, cipher, the peer's certificate."""

    __slots__ = ("cipher", "peer_certificate", "version")

    def __init__(self, version: str, cipher: str, peer_certificate: Mapping[str, Any] | None):
        #: "TLSv1.3", "TLSv1.2".
        self.version = version
        #: The cipher suite, as OpenSSL names it.
        self.cipher = cipher
        #: The peer's certificate as :meth:`ssl.SSLSocket.getpeercert` gives
        #: it (None when the peer sent none or it was not verified).
        self.peer_certificate = peer_certificate

    @property
    def peer_subject(self) -> str | None:
        """The peer certificate's subject, as "CN=modality1,O=Hospital" (None: no certificate)."""
        if not self.peer_certificate:
            return None
        parts = []
        for rdn in self.peer_certificate.get("subject", ()):
            for name, value in rdn:
                parts.append(f"{_SHORT_NAMES.get(name, name)}={value}")
        return ",".join(parts)

    def __repr__(self) -> str:
        return f"TlsInfo({self.version}, {self.cipher}, subject={self.peer_subject!r})"


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def tls_info(transport: Any) -> TlsInfo | None:
    """TLS facts of an asyncio transport; None for plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return TlsInfo(
        ssl_object.version() or "",
        cipher[0] if cipher else "",
        ssl_object.getpeercert() or None,
    )


# OpenSSL's reason codes, by what they mean for a DICOM node.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}
_NO_CLIENT_CERTIFICATE = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"}
_CERTIFICATE_REFUSED = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_DECRYPT_ERROR",
}


def describe_tls_failure(exc: BaseException) -> str:
    """Why a TLS handshake or connection failed, in words a person can act on."""
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        words = (reason or str(exc)).replace("_", " ").lower()
        if reason in _NOT_TLS:
            return f"{words}: one side speaks TLS, the other plain DICOM"
        if reason in _NO_CLIENT_CERTIFICATE:
            return f"{words}: a client certificate is required"
        if reason in _CERTIFICATE_REFUSED:
            return f"{words}: the other side does not trust the certificate it was sent"
        return words
    if isinstance(exc, ConnectionError):
        return "the connection was closed during the TLS handshake"
    return str(exc) or type(exc).__name__
