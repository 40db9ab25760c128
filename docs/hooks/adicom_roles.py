"""Griffe extension: Sphinx roles in adicom's docstrings become links in the API reference.

adicom's docstrings are prose written for ``help()`` and for Sphinx-style
readers: ``:class:`~adicom.peers.PeerRules```, ``:func:`connect```,
``:meth:`Association.release```. mkdocstrings renders docstrings as
Markdown, where such a role would show as ``:class:`` followed by code.
This extension rewrites each role, once the package is loaded, into an
optional cross-reference: a link when the object it names is on a page of
the site, plain code when it is not (a private module, pydicom, asyncio).
Names are resolved as Python would see them from the docstring's object
(its members, its module's imports, its parents), so ``:func:`connect```
in ``adicom.client`` points at ``adicom.client.connect``.

RST literal blocks (a paragraph ending in ``::``, then an indented block)
keep their code block, and the paragraph ends in a single colon.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxRoles", "convert"]

# :role:`target`, :role:`~target`, :role:`title <target>`, :py:role:`...`
ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|attr|data|mod|exc|obj|const|type):"
    r"`(?P<body>[^`]+)`"
)
# A paragraph that ends in "::" and is followed by an indented block (RST).
LITERAL_BLOCK = re.compile(r"(?m)^(?P<text>.*?)\s*::$(?=\n\n[ \t]+\S)")


def _resolve(scope: griffe.Object | griffe.Alias, name: str) -> str | None:
    """The full path ``name`` means in ``scope``, or None when it is not found."""
    head, _, rest = name.partition(".")
    try:
        target = scope.resolve(head)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return f"{target}.{rest}" if rest else target


def convert(text: str, scope: griffe.Object | griffe.Alias) -> str:
    """``text`` with every Sphinx role an optional autorefs cross-reference."""

    def link(match: re.Match[str]) -> str:
        body = match["body"].strip()
        titled = re.fullmatch(r"(?P<title>.*?)\s*<(?P<target>[^<>]+)>", body)
        if titled:
            title, target = titled["title"], titled["target"]
        else:
            target = body.removeprefix("!")
            title = target.removeprefix("~").rsplit(".", 1)[-1] if body.startswith("~") else target
        target = target.removeprefix("~").removeprefix(".").removesuffix("()")
        title = title.removeprefix(".")
        if match["role"] in ("func", "meth") and not title.endswith(")"):
            title += "()"
        path = target if target.startswith("adicom.") else _resolve(scope, target) or target
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

    text = ROLE.sub(link, text)
    return LITERAL_BLOCK.sub(lambda m: f"{m['text']}:" if m["text"].strip() else "", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Convert every docstring of ``pkg`` and its members, aliases left out."""
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)
            pending.extend(
                member
                for member in obj.members.values()
                if not member.is_alias and isinstance(member, griffe.Object)
            )
