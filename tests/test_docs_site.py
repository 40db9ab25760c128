"""The docs site builds with ``mkdocs build --strict``, and what it generates stays true.

The build runs once per test session, into a temporary folder: a broken
link, a missing anchor, a page left out of the navigation, a cross-reference
to nothing or an include of a section that is gone fails it. The CLI page
is generated from the parser, so it is checked against the parser here.
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib.util
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import adicom
from adicom import cli

ROOT = Path(__file__).resolve().parent.parent

# The build takes about 10 s on an idle 2-core machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADICOM_")}
    # The CLI page must not show this machine's settings as the defaults.
    env["ADICOM_AET"] = "FROM-ENV"
    env["NO_MKDOCS_2_WARNING"] = "1"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def text_of(page: Path, tag: str = " ") -> str:
    """The page's text, each tag replaced by ``tag``, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", tag, page.read_text(encoding="utf-8")))


def subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from subcommands(sub)


@pytest.mark.parametrize(
    "page",
    [
        "index.html",
        "client/index.html",
        "server/index.html",
        "limits/index.html",
        "security/index.html",
        "services/index.html",
        "cli/index.html",
        "pynetdicom/index.html",
        "benchmarks/index.html",
        "architecture/index.html",
        "api/index.html",
        "api/adicom/index.html",
        "api/errors/index.html",
    ],
)
def test_page_is_built(site: Path, page: str) -> None:
    assert (site / page).stat().st_size > 2000


def test_cli_page_has_every_subcommand_and_option(site: Path) -> None:
    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    text = text_of(site / "cli" / "index.html")
    commands = list(subcommands(cli.build_parser()))
    assert len(commands) >= 9
    for command in commands:
        anchor = "-".join(command.prog.split()[1:])
        assert f'id="{anchor}"' in page, f"no section for {command.prog}"
        assert f"usage: {command.prog} " in text, f"no usage line for {command.prog}"
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert option in text, f"{command.prog} {option} is not on the CLI page"


def test_cli_page_shows_built_in_defaults_not_the_environment(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variable the build ran with does change the parser's defaults ...
    monkeypatch.setenv("ADICOM_AET", "FROM-ENV")
    (serve,) = [c for c in subcommands(cli.build_parser()) if c.prog == "adicom serve"]
    (aet,) = [a for a in serve._actions if "--aet" in a.option_strings]
    assert aet.default == "FROM-ENV"
    # ... but not the page.
    assert "FROM-ENV" not in text_of(site / "cli" / "index.html")


def inventory(site: Path) -> set[str]:
    """The names in the site's objects.inv (Sphinx inventory, version 2)."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    lines = zlib.decompress(data[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line}


def test_every_name_adicom_exports_is_in_the_api_reference(site: Path) -> None:
    names = inventory(site)
    public = [name for name in adicom.__all__ if not name.startswith("_")]
    missing = [name for name in public if f"adicom.{name}" not in names]
    assert public and not missing


def test_limits_page_is_the_limits_section_of_the_server_page(site: Path) -> None:
    server = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")
    section = server.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    flags = set(re.findall(r"--[a-z][a-z-]+", section))
    assert len(flags) >= 5
    limits = text_of(site / "limits" / "index.html")
    assert not [flag for flag in flags if flag not in limits]


def test_benchmarks_page_has_the_readme_table_and_the_benchmarks_notes(site: Path) -> None:
    text = text_of(site / "benchmarks" / "index.html", tag="")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_row = next(line for line in readme.splitlines() if line.startswith("| C-STORE"))
    assert first_row.split("|")[1].strip() in text
    notes = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", notes, re.M)
    assert headings and not [h for h in headings if h.replace("`", "") not in text]


def test_pynetdicom_examples_are_python() -> None:
    # The adicom examples run in tests/test_docs.py; pynetdicom's are ```py
    # (not run: they would need a peer and start threads) but must parse.
    page = (ROOT / "docs" / "pynetdicom.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```py\n(.*?)^```", page, re.S | re.M)
    assert len(blocks) >= 6
    for block in blocks:
        ast.parse(block)


# -- the hook's includes, without a build ---------------------------------------


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "adicom_pages", ROOT / "docs" / "hooks" / "adicom_pages.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOTES = """\
# Notes

Intro, see [the server](docs/server.md#limits) and [a site](https://example.org).

## Wanted

Text of the wanted section.

```sh
# not a heading: inside a fence
```

### Detail

More.

## Other

Not wanted.
"""


def test_include_takes_one_section_with_its_subsections(hook: ModuleType, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "server.md").write_text("# Server\n")
    (tmp_path / "NOTES.md").write_text(NOTES)
    section = hook.include(docs, "page.md", "../NOTES.md", "Wanted")
    assert section.startswith("Text of the wanted section.")
    assert "# not a heading: inside a fence" in section
    assert "\n## Detail\n" in section  # moved up one level, as the section was
    assert "Not wanted" not in section


def test_include_of_a_whole_file_drops_its_title_and_rebases_links(
    hook: ModuleType, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "server.md").write_text("# Server\n")
    (tmp_path / "NOTES.md").write_text(NOTES)
    whole = hook.include(docs, "sub/page.md", "../../NOTES.md", None)
    assert not whole.startswith("# Notes")
    assert "[the server](../server.md#limits)" in whole
    assert "[a site](https://example.org)" in whole
    assert "\n## Wanted\n" in whole and "\n## Other\n" in whole


def test_include_of_a_missing_section_stops_the_build(hook: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "NOTES.md").write_text(NOTES)
    with pytest.raises(Exception, match="no section 'Gone'"):
        hook.include(tmp_path, "page.md", "NOTES.md", "Gone")
