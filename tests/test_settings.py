"""DicomSettings: defaults, environment variables, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adicom.settings import DicomSettings

VARIABLES = (
    "AET",
    "PORT",
    "IP",
    "MAX_PDU",
    "CONNECT_TIMEOUT",
    "ASSOCIATION_TIMEOUT",
    "DIMSE_TIMEOUT",
    "IDLE_TIMEOUT",
    "STORAGE_DIR",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ADICOM_* variable from the outside, and a directory with a .env to ignore."""
    for name in VARIABLES:
        monkeypatch.delenv(f"ADICOM_{name}", raising=False)
    (tmp_path / ".env").write_text("ADICOM_AET=FROM_DOTENV\nADICOM_PORT=1\n")
    monkeypatch.chdir(tmp_path)


def error_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    """The one error's location and message."""
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}"


def test_defaults() -> None:
    settings = DicomSettings()
    assert settings.aet == "ADICOM"
    assert settings.port == 11112
    assert settings.ip is None
    assert settings.max_pdu == 16384
    assert settings.connect_timeout > 0
    assert settings.association_timeout > 0
    assert settings.dimse_timeout > 0
    assert settings.idle_timeout > 0
    assert settings.storage_dir is None


def test_dotenv_not_read_by_default() -> None:
    assert DicomSettings().aet == "ADICOM"


def test_dotenv_read_when_asked() -> None:
    settings = DicomSettings(_env_file=".env")  # type: ignore[call-arg]
    assert settings.aet == "FROM_DOTENV"
    assert settings.port == 1


def test_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADICOM_AET", "  MY_SCU ")
    monkeypatch.setenv("ADICOM_PORT", "104")
    monkeypatch.setenv("ADICOM_IP", "127.0.0.1")
    monkeypatch.setenv("ADICOM_MAX_PDU", "32768")
    monkeypatch.setenv("ADICOM_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("ADICOM_ASSOCIATION_TIMEOUT", "5")
    monkeypatch.setenv("ADICOM_DIMSE_TIMEOUT", "120")
    monkeypatch.setenv("ADICOM_IDLE_TIMEOUT", "0.5")
    monkeypatch.setenv("ADICOM_STORAGE_DIR", str(tmp_path / "store"))
    settings = DicomSettings()
    assert settings.aet == "MY_SCU"
    assert settings.port == 104
    assert settings.ip == "127.0.0.1"
    assert settings.max_pdu == 32768
    assert settings.connect_timeout == 2.5
    assert settings.association_timeout == 5.0
    assert settings.dimse_timeout == 120.0
    assert settings.idle_timeout == 0.5
    assert settings.storage_dir == tmp_path / "store"


def test_variable_names_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("adicom_aet", "LOWER")
    assert DicomSettings().aet == "LOWER"


def test_keyword_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADICOM_AET", "FROM_ENV")
    assert DicomSettings(aet="FROM_ARG").aet == "FROM_ARG"


@pytest.mark.parametrize("name", ["IP", "STORAGE_DIR"])
def test_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(f"ADICOM_{name}", "")
    settings = DicomSettings()
    assert getattr(settings, name.lower()) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0", "0.0.0.0"), ("::", "::"), ("::0001", "::1"), (" 10.1.2.3 ", "10.1.2.3")],
)
def test_ip_valid(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("ADICOM_IP", value)
    assert DicomSettings().ip == expected


@pytest.mark.parametrize("value", [0, 4096, 16384, 2**32 - 1])
def test_max_pdu_valid(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    monkeypatch.setenv("ADICOM_MAX_PDU", str(value))
    assert DicomSettings().max_pdu == value


@pytest.mark.parametrize("value", [0, 1, 104, 65535])
def test_port_valid(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    monkeypatch.setenv("ADICOM_PORT", str(value))
    assert DicomSettings().port == value


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("AET", "A\\B", "aet", "backslash"),
        ("AET", "X" * 17, "aet", "17 characters"),
        ("AET", "   ", "aet", "all spaces"),
        ("AET", "", "aet", "all spaces"),
        ("AET", "ÄE", "aet", "non-ASCII"),
        ("PORT", "-1", "port", "allowed: 0 (any free port) to 65535"),
        ("PORT", "65536", "port", "allowed: 0 (any free port) to 65535"),
        ("PORT", "http", "port", "valid integer"),
        ("IP", "localhost", "ip", "not an IP address"),
        ("IP", "999.1.1.1", "ip", "not an IP address"),
        ("MAX_PDU", "1", "max_pdu", "allowed: 0 (no limit) or 4096 to 4294967295"),
        ("MAX_PDU", "4095", "max_pdu", "allowed: 0 (no limit) or 4096"),
        ("MAX_PDU", str(2**32), "max_pdu", "allowed: 0 (no limit) or 4096"),
        ("MAX_PDU", "-1", "max_pdu", "out of range"),
        ("MAX_PDU", "16k", "max_pdu", "valid integer"),
        ("CONNECT_TIMEOUT", "0", "connect_timeout", "not a positive number"),
        ("ASSOCIATION_TIMEOUT", "-1", "association_timeout", "not a positive number"),
        ("DIMSE_TIMEOUT", "nan", "dimse_timeout", "not a positive number"),
        ("IDLE_TIMEOUT", "inf", "idle_timeout", "finite number greater than 0"),
        ("IDLE_TIMEOUT", "soon", "idle_timeout", "valid number"),
    ],
)
def test_invalid_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: str
) -> None:
    monkeypatch.setenv(f"ADICOM_{name}", value)
    with pytest.raises(ValidationError) as exc:
        DicomSettings()
    message = error_of(exc)
    assert message.startswith(f"{field}: ")
    assert expected in message
    assert repr(value)[1:-1].strip() in str(exc.value)


def test_unknown_keyword_argument_refused() -> None:
    with pytest.raises(ValidationError):
        DicomSettings(calling_aet="X")  # type: ignore[call-arg]


def test_unrelated_variables_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADICOM_UNKNOWN", "1")
    assert DicomSettings().aet == "ADICOM"
