"""adicom's version, from the one place it is written: the package metadata.

``pyproject.toml`` sets the version; an installed adicom (editable or not)
reads it back here. The implementation version name adicom announces in
every association (PS3.7 D.3.3.2.3) is made from it.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["IMPLEMENTATION_VERSION_NAME", "__version__"]

try:
    __version__ = metadata.version("adicom")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
    __version__ = "0+unknown"

#: Implementation version name (PS3.7 D.3.3.2.3): at most 16 characters of
#: the default character repertoire, e.g. "ADICOM_010" for 0.1.0.
IMPLEMENTATION_VERSION_NAME = ("ADICOM_" + "".join(c for c in __version__ if c.isalnum()))[:16]
