"""The built-in defaults of :class:`adicom.DicomSettings`, without pydantic.

``adicom serve`` takes its flags' defaults from the ``ADICOM_*`` variables
through ``DicomSettings``. When no such variable is set there is nothing to
read or validate, and these values stand in: the server then never imports
pydantic and pydantic-settings (about 11 MB of its resident memory).
``tests/test_footprint.py`` checks that they equal the settings' defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["SETTINGS_DEFAULTS", "SettingsDefaults", "settings_in_environment"]


@dataclass(frozen=True)
class SettingsDefaults:
    """The fields of :class:`adicom.DicomSettings`, each at its default."""

    aet: str = "ADICOM"
    port: int = 11112
    ip: str | None = None
    max_pdu: int = 16384
    connect_timeout: float = 10.0
    association_timeout: float = 10.0
    dimse_timeout: float = 30.0
    idle_timeout: float = 60.0
    storage_dir: Path | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_verify: bool = True
    tls_require_client_cert: bool = False
    retry_attempts: int = 1
    retry_backoff: float = 0.5
    retry_max_delay: float = 10.0
    retry_deadline: float | None = 120.0


#: The defaults, as one value.
SETTINGS_DEFAULTS = SettingsDefaults()


#: The variables DicomSettings reads (``ADICOM_`` and a field's name).
_SETTINGS_VARIABLES = frozenset(
    f"ADICOM_{field.name.upper()}" for field in fields(SettingsDefaults)
)


def settings_in_environment() -> bool:
    """Whether a variable of :class:`adicom.DicomSettings` is set (names case-insensitive).

    Only those: ``ADICOM_LOOP`` (the command line's event loop) is no
    setting, and must not load pydantic into ``adicom serve``.
    """
    return any(name.upper() in _SETTINGS_VARIABLES for name in os.environ)
