"""DicomSettings: defaults, environment variables, and clear errors."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from adicom import cli
from adicom.dicomclient import DicomClient
from adicom.settings import DicomSettings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "client.md"

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
    "TLS",
    "TLS_CA",
    "TLS_CERT",
    "TLS_KEY",
    "TLS_VERIFY",
    "TLS_REQUIRE_CLIENT_CERT",
    "RETRY_ATTEMPTS",
    "RETRY_BACKOFF",
    "RETRY_MAX_DELAY",
    "RETRY_DEADLINE",
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
    assert settings.connect_timeout == 10.0
    # The ARTIM timer of adicom serve, as Server's and open_association's own default.
    assert settings.association_timeout == 10.0
    assert settings.dimse_timeout == 30.0
    assert settings.idle_timeout == 60.0
    assert settings.storage_dir is None


def test_every_field_has_a_variable() -> None:
    assert set(DicomSettings.model_fields) == {name.lower() for name in VARIABLES}


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


# -- who reads the settings, and docs/client.md's table ------------------------


def test_from_settings_reads_the_client_fields() -> None:
    settings = DicomSettings(aet="ENV_SCU", max_pdu=32768, connect_timeout=2, dimse_timeout=3)
    client = DicomClient.from_settings(settings)
    assert client.calling_aet == "ENV_SCU"
    assert client.max_pdu == 32768
    assert (client.connect_timeout, client.dimse_timeout) == (2, 3)


def settings_table() -> dict[str, tuple[str, str, str]]:
    """docs/client.md's settings table: field -> (variable, default, read by)."""
    rows = re.findall(
        r"^\| `(ADICOM_\w+)` \| `(\w+)` \| ([^|]+?) \| ([^|]+?) \|$", DOCS.read_text(), re.M
    )
    return {field: (variable, default, readers) for variable, field, default, readers in rows}


def test_docs_table_lists_every_field_with_its_variable_and_default() -> None:
    table = settings_table()
    assert list(table) == list(DicomSettings.model_fields)
    for field, (variable, default, _) in table.items():
        assert variable == f"ADICOM_{field.upper()}"
        value = DicomSettings.model_fields[field].default
        assert default == ("unset" if value is None else f"`{value}`"), field


# A value of each field that differs from its default.
SAMPLES = {
    "aet": "DOC_SCP",
    "port": "4321",
    "ip": "127.0.0.2",
    "max_pdu": "65536",
    "connect_timeout": "1.5",
    "association_timeout": "2.5",
    "dimse_timeout": "3.5",
    "idle_timeout": "4.5",
    "storage_dir": "/srv/doc",
    "tls": "True",
    # The TLS files: test_docs_table_names_the_real_readers makes real ones.
    "tls_ca": "ca.pem",
    "tls_cert": "client.pem",
    "tls_key": "client-key.pem",
    "tls_verify": "False",
    "tls_require_client_cert": "True",
    "retry_attempts": "4",
    "retry_backoff": "0.25",
    "retry_max_delay": "2.0",
    "retry_deadline": "30.0",
}


def test_docs_table_names_the_real_readers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each field has a reader, and the table names exactly the readers there are."""
    assert set(SAMPLES) == set(DicomSettings.model_fields)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued = ca.issue_cert("client.example")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    for field, value in SAMPLES.items():
        monkeypatch.setenv(f"ADICOM_{field.upper()}", value)
    client = DicomClient.from_settings()
    assert client.ssl is not None
    client_reads = {
        "aet": client.calling_aet == "DOC_SCP",
        "max_pdu": client.max_pdu == 65536,
        "connect_timeout": client.connect_timeout == 1.5,
        "dimse_timeout": client.dimse_timeout == 3.5,
        "retry_attempts": client.retry.attempts == 4,
        "retry_backoff": client.retry.backoff == 0.25,
        "retry_max_delay": client.retry.max_delay == 2.0,
        "retry_deadline": client.retry.deadline == 30.0,
        "tls": client.ssl is not None,
        # The key and certificate were loaded (a missing file raises) and
        # verification is off as asked (which is logged).
        "tls_cert": True,
        "tls_key": True,
        "tls_verify": client.ssl.verify_mode == ssl.CERT_NONE
        and any("without verifying" in r.getMessage() for r in caplog.records),
    }
    # The CA is read when verifying: the same settings but verify on.
    monkeypatch.setenv("ADICOM_TLS_VERIFY", "True")
    verifying = DicomClient.from_settings().ssl
    assert verifying is not None
    client_reads["tls_ca"] = [
        int(str(c["serialNumber"]), 16) for c in verifying.get_ca_certs()
    ] == [ca._certificate.serial_number]
    monkeypatch.setenv("ADICOM_TLS_VERIFY", "False")
    serve = vars(cli.build_parser().parse_args(["serve"]))
    for field, (_, _, readers) in settings_table().items():
        assert ("DicomClient.from_settings()" in readers) == client_reads.get(field, False), field
        flags = re.findall(r"`adicom serve (--[\w-]+)`", readers)
        for flag in flags:
            assert str(serve[flag.removeprefix("--").replace("-", "_")]) == SAMPLES[field], flag
        assert flags or field in client_reads, f"{field} has no reader"
