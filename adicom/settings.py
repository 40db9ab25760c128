"""Settings for an adicom application, from keyword arguments or ``ADICOM_*`` variables.

``DicomSettings()`` reads the environment only: ``ADICOM_AET``,
``ADICOM_PORT``, ``ADICOM_IP``, ``ADICOM_MAX_PDU``,
``ADICOM_CONNECT_TIMEOUT``, ``ADICOM_ASSOCIATION_TIMEOUT``,
``ADICOM_DIMSE_TIMEOUT``, ``ADICOM_IDLE_TIMEOUT``, ``ADICOM_STORAGE_DIR`` and
the TLS ones, ``ADICOM_TLS``, ``ADICOM_TLS_CA``, ``ADICOM_TLS_CERT``,
``ADICOM_TLS_KEY``, ``ADICOM_TLS_VERIFY``, ``ADICOM_TLS_REQUIRE_CLIENT_CERT``,
and the client's retries, ``ADICOM_RETRY_ATTEMPTS``, ``ADICOM_RETRY_BACKOFF``,
``ADICOM_RETRY_MAX_DELAY``, ``ADICOM_RETRY_DEADLINE`` (names are
case-insensitive). No ``.env`` file is read unless asked for, as
pydantic-settings allows: ``DicomSettings(_env_file=".env")``. Keyword
arguments win over the environment.

Two readers use them: :meth:`adicom.DicomClient.from_settings` (``aet``,
``max_pdu``, ``connect_timeout``, ``dimse_timeout``, the client's TLS) and
``adicom serve``, whose flags default to ``aet``, ``ip``, ``port``,
``storage_dir``, the association, DIMSE and idle timeouts and the server's
TLS (a flag given wins).

A bad value raises pydantic's ValidationError naming the field (the variable
is ``ADICOM_`` and the field's name in uppercase), the value, and what is
allowed.
"""

import ipaddress
import math
from pathlib import Path
from ssl import SSLContext

from pydantic import ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adicom.models import AETitle
from adicom.retry import RetryPolicy
from adicom.tls import client_context, server_context

__all__ = ["DicomSettings"]

# PS3.8 D.1: the maximum length is a 32-bit field, 0 meaning no limit. Below
# 4096 bytes (DCMTK's floor too) every data set is cut into tiny PDVs.
_MIN_PDU = 4096
_MAX_PDU = 2**32 - 1


class DicomSettings(BaseSettings):
    """How this application entity presents itself and how patient it is.

    Every field can be set by the environment variable ``ADICOM_<FIELD>``,
    for example ``ADICOM_AET=MY_SCU`` or ``ADICOM_DIMSE_TIMEOUT=120``.
    """

    model_config = SettingsConfigDict(
        env_prefix="ADICOM_",
        env_file=None,
        extra="forbid",
        validate_default=True,
    )

    aet: AETitle = "ADICOM"
    """Our AE title: the client's calling AE title, the one ``adicom serve`` answers to."""

    port: int = 11112
    """The TCP port ``adicom serve`` listens on; 0 lets the system pick a free one."""

    ip: str | None = None
    """The IP address ``adicom serve`` listens on; None (or empty): 0.0.0.0, every IPv4 one."""

    max_pdu: int = 16384
    """The largest PDU the client accepts, in bytes: 0 for no limit, else 4096 to 2**32-1."""

    connect_timeout: float = 10.0
    """Seconds the client allows to open the TCP connection to a peer."""

    association_timeout: float = 10.0
    """Seconds of ``adicom serve``'s ARTIM timer (PS3.8 9.1.5).

    It bounds the wait for the A-ASSOCIATE-RQ once a peer connects, and for the
    peer to close the connection after a release or an abort.
    """

    dimse_timeout: float = 30.0
    """Seconds to wait for each DIMSE response once a request is sent (client and serve)."""

    idle_timeout: float = 60.0
    """Seconds of silence after which ``adicom serve`` aborts an association."""

    storage_dir: Path | None = None
    """The folder ``adicom serve`` runs its archive in; None (or empty): C-ECHO only.

    The archive stores what it receives by C-STORE there, indexes it, and
    answers C-FIND, C-GET and C-MOVE from it.
    """

    tls: bool = False
    """Use TLS for the associations the client requests (also on when a TLS file is set)."""

    tls_ca: Path | None = None
    """CA certificates (PEM) a peer's certificate must chain to; None: the system's."""

    tls_cert: Path | None = None
    """Our certificate (PEM), with its chain; for ``adicom serve``, turns TLS on."""

    tls_key: Path | None = None
    """The private key of ``tls_cert`` (PEM), unless that file holds it too."""

    tls_verify: bool = True
    """Check the server's certificate (the client); False is for tests only and is logged."""

    tls_require_client_cert: bool = False
    """``adicom serve``: refuse TLS clients without a certificate from ``tls_ca``."""

    retry_attempts: int = 1
    """How many times the client tries an operation (1: no retry; see :mod:`adicom.retry`)."""

    retry_backoff: float = 0.5
    """Seconds before the first retry; each next wait doubles (with jitter)."""

    retry_max_delay: float = 10.0
    """The longest wait between two tries, in seconds."""

    retry_deadline: float | None = 120.0
    """Seconds all tries of one operation may take together (None: no bound)."""

    def retry_policy(self) -> RetryPolicy:
        """The client's :class:`~adicom.retry.RetryPolicy` from the retry settings."""
        return RetryPolicy(
            attempts=self.retry_attempts,
            backoff=self.retry_backoff,
            max_delay=self.retry_max_delay,
            deadline=self.retry_deadline,
        )

    @field_validator("retry_attempts")
    @classmethod
    def _check_attempts(cls, value: int) -> int:
        if not 1 <= value <= 100:
            raise ValueError(f"{value} attempts; allowed: 1 (no retry) to 100")
        return value

    @field_validator("retry_backoff", "retry_max_delay")
    @classmethod
    def _check_delay(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 <= value <= 3600):
            raise ValueError(f"{value} seconds; allowed: 0 to 3600")
        return value

    @field_validator("retry_deadline")
    @classmethod
    def _check_deadline(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{value} seconds; allowed: a positive number, or unset for none")
        return value

    def client_ssl_context(self) -> SSLContext | None:
        """The client's TLS context (:func:`adicom.tls.client_context`), or None for plain TCP."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        return client_context(
            ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, verify=self.tls_verify
        )

    def server_ssl_context(self) -> SSLContext | None:
        """``adicom serve``'s TLS context (:func:`adicom.tls.server_context`), or None."""
        if self.tls_cert is None:
            return None
        return server_context(
            cert=self.tls_cert,
            key=self.tls_key,
            ca=self.tls_ca,
            require_client_cert=self.tls_require_client_cert,
        )

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} is out of range; allowed: 0 (any free port) to 65535")
        return value

    @field_validator("ip", "storage_dir", "tls_ca", "tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # An empty variable (ADICOM_IP=) reads as "not set", not as a path ".".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("ip")
    @classmethod
    def _check_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(
                f"ip {value!r} is not an IP address; allowed: an IPv4 or IPv6 address "
                "such as 0.0.0.0, 127.0.0.1 or ::1, or unset for every interface"
            ) from None

    @field_validator("max_pdu")
    @classmethod
    def _check_max_pdu(cls, value: int) -> int:
        if value != 0 and not _MIN_PDU <= value <= _MAX_PDU:
            raise ValueError(
                f"max_pdu {value} is out of range; allowed: 0 (no limit) or "
                f"{_MIN_PDU} to {_MAX_PDU} bytes"
            )
        return value

    @field_validator("connect_timeout", "association_timeout", "dimse_timeout", "idle_timeout")
    @classmethod
    def _check_timeout(cls, value: float, info: ValidationInfo) -> float:
        name = info.field_name
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{name} {value!r} is not a positive number of seconds; "
                "allowed: a finite number greater than 0"
            )
        return value
