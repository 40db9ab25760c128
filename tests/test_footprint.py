"""What a role imports: ``adicom serve`` loads neither the client nor pydantic (issue 17).

An SCP's resident memory is mostly the code it imported: pydantic and
pydantic-settings are ~11 MB, the client and its models more. ``import
adicom`` resolves its public names on first use (PEP 562), the command line
imports only the command's modules, and ``serve`` reads its defaults through
pydantic only when some ``ADICOM_*`` variable asks for it. These tests fail
when an import brings them back.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import adicom
from adicom.defaults import SETTINGS_DEFAULTS, SettingsDefaults, settings_in_environment
from adicom.settings import DicomSettings

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Modules a storage / query-retrieve SCP has no use for.
NOT_FOR_SERVE = (
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "adicom.settings",
    "adicom.models",
    "adicom.values",
    "adicom.worklist",
    "adicom.dicomclient",
    "adicom.clientbase",
    "adicom.batch",
    "adicom.pool",
    "adicom.progress",
    "adicom.demo",
    "adicom.cli.commands",
)

# The server, started as ``python -m adicom serve`` would be; on SIGUSR2 it
# writes the names of its modules to argv[1] and exits.
_SERVE = """
import json, os, signal, sys
out = sys.argv.pop(1)
def dump(*_):
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os._exit(0)
signal.signal(signal.SIGUSR2, dump)
from adicom.cli import main
sys.exit(main())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ADICOM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _serve_modules(tmp_path: pathlib.Path, **env: str) -> set[str]:
    out = tmp_path / "modules.json"
    argv = [sys.executable, "-c", _SERVE, str(out), "serve", "--host", "127.0.0.1", "--port",
            "0", "--storage", str(tmp_path / "archive")]  # fmt: skip
    with subprocess.Popen(
        argv, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            for line in proc.stdout:
                if "listening on" in line:
                    break
                assert time.monotonic() < deadline, "adicom serve did not start"
            else:
                pytest.fail(f"adicom serve exited with {proc.wait()}")
            proc.send_signal(signal.SIGUSR2)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    modules: list[str] = json.loads(out.read_text())
    return set(modules)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR2")
def test_serve_imports_neither_the_client_nor_pydantic(tmp_path: pathlib.Path) -> None:
    modules = _serve_modules(tmp_path)
    assert "adicom.server" in modules and "adicom.archive" in modules
    assert sorted(modules & set(NOT_FOR_SERVE)) == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR2")
def test_serve_reads_adicom_variables_through_the_settings(tmp_path: pathlib.Path) -> None:
    # The other side of the test above: a variable set, and the settings
    # (pydantic) read it, as documented.
    modules = _serve_modules(tmp_path, ADICOM_IDLE_TIMEOUT="90")
    assert {"pydantic", "adicom.settings"} <= modules


def _imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    modules: list[str] = json.loads(out.stdout.splitlines()[-1])
    return set(modules)


def test_import_adicom_loads_a_public_name_on_first_use() -> None:
    assert not _imported_by("import adicom") & {"pydantic", "pydicom", "adicom.dicomclient"}
    modules = _imported_by("import adicom\nadicom.Server")
    assert "adicom.server" in modules and "pydantic" not in modules
    assert "pydantic" in _imported_by("from adicom import DicomClient")


def test_every_public_name_resolves() -> None:
    for name in adicom.__all__:
        value = getattr(adicom, name)
        assert value is not None
        if name != "__version__":
            assert getattr(value, "__name__", name) == name
    assert set(adicom.__all__) <= set(dir(adicom))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        adicom.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_serve_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = set(DicomSettings.model_fields)
    assert fields == set(SettingsDefaults.__dataclass_fields__)
    defaults = DicomSettings.model_construct()
    for field in sorted(fields):
        assert getattr(SETTINGS_DEFAULTS, field) == getattr(defaults, field), field
    for name in list(os.environ):
        if name.upper().startswith("ADICOM_"):
            monkeypatch.delenv(name)
    assert not settings_in_environment()
    # The command line's event loop is no setting (the benchmarks set it).
    monkeypatch.setenv("ADICOM_LOOP", "asyncio")
    assert not settings_in_environment()
    monkeypatch.setenv("adicom_port", "11113")
    assert settings_in_environment()
