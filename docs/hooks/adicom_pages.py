"""MkDocs hook: pages made at build time from the code and from other files.

Two markers, each alone on a line of a page's Markdown:

- ``<!-- cli-reference -->`` becomes the command line reference, generated
  from the parser that ``adicom`` itself runs (``adicom.cli.build_parser()``):
  every subcommand, its usage, its options with their help and defaults.
  Nothing is copied by hand, so the page cannot go stale.
- ``<!-- include PATH -->`` and ``<!-- include PATH#Heading -->`` become
  the text of another Markdown file (PATH relative to the page), whole but
  for its title, or the body of one of its sections. Its headings move up
  so that its top level is the page's second level, and its relative links
  are rewritten to work from the page. A section that is not there stops
  the build: a renamed heading must not leave an empty page.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

__all__ = ["cli_reference", "include", "on_page_markdown"]

log = logging.getLogger("mkdocs.hooks.adicom_pages")

CLI_MARKER = re.compile(r"^<!-- cli-reference -->$", re.M)
INCLUDE = re.compile(r"^<!-- include (?P<path>[^#\s]+)(?:#(?P<section>[^>]*?))? -->$", re.M)
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.*?)\s*#*\s*$")
LINK = re.compile(r"(?P<open>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<close>[^)]*\))")
# Usage lines are wrapped at this width, whatever the terminal building the site.
WIDTH = 88


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Fill in the markers of a page (see the module's docstring)."""
    if CLI_MARKER.search(markdown):
        markdown = CLI_MARKER.sub(lambda _: cli_reference(), markdown)
    docs = Path(config.docs_dir)
    where = page.file.src_uri
    return INCLUDE.sub(
        lambda m: include(docs, where, m["path"], m["section"] and m["section"].strip()),
        markdown,
    )


# -- includes -------------------------------------------------------------------


def _lines_outside_fences(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(index, line) of every line not inside a fenced code block."""
    fence: str | None = None
    for index, line in enumerate(lines):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield index, line


def include(docs: Path, page: str, path: str, section: str | None) -> str:
    """The Markdown of ``path`` (relative to ``page`` in ``docs``), or of one of its sections."""
    page_dir = posixpath.dirname(page)
    source = (docs / page_dir / path).resolve()
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PluginError(f"{page}: cannot include {path}: {exc}") from None
    headings = [
        (index, len(m["hashes"]), m["title"])
        for index, line in _lines_outside_fences(lines)
        if (m := HEADING.match(line))
    ]
    if section:
        found = [(i, level) for i, level, title in headings if title == section]
        if not found:
            raise PluginError(f"{page}: {path} has no section {section!r} to include")
        start, level = found[0]
        end = next((i for i, lv, _ in headings if i > start and lv <= level), len(lines))
        body, body_start = lines[start + 1 : end], start + 1
    else:
        level = 1 if headings and headings[0][1] == 1 else 0
        body_start = headings[0][0] + 1 if level else 0
        body = lines[body_start:]
    # The section's own level becomes the page's title level (1).
    shift = level - 1 if level else 0
    moved = {i - body_start for i, lv, _ in headings if body_start <= i < body_start + len(body)}
    out = []
    for index, line in enumerate(body):
        if index in moved and shift:
            line = line[shift:]
        elif index not in moved:
            line = _rebase_links(line, source, docs, page)
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _rebase_links(line: str, source: Path, docs: Path, page: str) -> str:
    """``line`` with its relative links made relative to ``page`` instead of ``source``."""

    def rebase(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):
            return match.group(0)
        file, hash_, anchor = target.partition("#")
        resolved = (source.parent / file).resolve()
        try:
            inside = resolved.relative_to(docs.resolve())
        except ValueError:
            log.warning(
                "%s: the included %s links to %s, which is not part of the site",
                page,
                source.name,
                file,
            )
            return match.group(0)
        new = posixpath.relpath(inside.as_posix(), posixpath.dirname(page) or ".")
        return f"{match['open']}{new}{hash_}{anchor}{match['close']}"

    return LINK.sub(rebase, line)


# -- the command line reference ----------------------------------------------------


@contextmanager
def _without_adicom_environment() -> Iterator[None]:
    """Hide ``ADICOM_*`` variables: ``adicom serve`` takes its defaults from them."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("ADICOM_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _escape(text: str) -> str:
    """Help text as Markdown that shows it literally (and fits in a table cell)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*_\[\]|])", r"\\\1", text)
    return " ".join(text.split())


def _invocation(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """How an argument is written: ``-k, --key KEY=VALUE`` or ``PATH [PATH ...]``."""
    if not action.option_strings:
        return formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    metavar = formatter._get_default_metavar_for_optional(action)
    return f"{names} {formatter._format_args(action, metavar)}"


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """An argument's help, ``%(default)s`` and the like filled in."""
    text = formatter._expand_help(action) if action.help else ""
    if action.required and action.option_strings:
        text = f"{text} (required)" if text else "required"
    return _escape(text)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of ``parser``, in order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _anchor(prog: str) -> str:
    words = prog.split()[1:]
    return "-".join(words) if words else "adicom"


def _command(parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    """The Markdown of one command: title, description, usage, argument tables."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
    formatter = parser._get_formatter()
    out = [f"{'#' * level} `{parser.prog}` {{#{_anchor(parser.prog)}}}", ""]
    description = parser.description or summary
    if description:
        out += [_escape(description), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    subcommands = _subcommands(parser)
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        if not actions:
            continue
        title = group.title or "arguments"
        title = title[:1].upper() + title[1:]
        out += [f"**{_escape(title)}**", ""]
        if group.description:
            out += [_escape(group.description), ""]
        out += ["| argument | meaning |", "| --- | --- |"]
        out += [f"| `{_invocation(a, formatter)}` | {_help(a, formatter)} |" for a in actions]
        out.append("")
    if subcommands:
        out += ["| command | what it does |", "| --- | --- |"]
        out += [
            f"| [`{name}`](#{_anchor(sub.prog)}) | {_escape(text)} |"
            for name, text, sub in subcommands
        ]
        out.append("")
        for _, text, sub in subcommands:
            out += _command(sub, text, level + 1)
    return out


def cli_reference() -> str:
    """The Markdown reference of ``adicom``'s command line, from its parser."""
    from adicom import cli

    with _without_adicom_environment():
        parser = cli.build_parser()
    # The module's docstring, but for its first line, says what holds for
    # every command (the exit codes); it is Markdown enough to use as it is.
    doc = inspect.cleandoc(cli.__doc__ or "").split("\n\n", 1)
    intro = [doc[1], ""] if len(doc) > 1 else []
    return "\n".join([*intro, *_command(parser, "", 2)])
