"""Where an archive with a shared index keeps the instances' bytes: :class:`FileStore`.

The index holds a location per instance (text it never interprets) and
decides between two stores of one SOP Instance UID; what happens to the
bytes is these few operations. :class:`SharedFolder` does them on a folder
several nodes mount. Object storage (S3 and the like) fits the same four:
placing is a conditional ``PUT`` (``If-None-Match: *``) or a unique key,
removing a ``DELETE``, checking a ``HEAD``; reading, for C-GET and C-MOVE,
a ranged ``GET`` streamed as sent (see docs/deployment.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Protocol

from adicom.diskstorage import DiskStorage

__all__ = ["FileStore", "SharedFolder"]

# link() failing so: the file system has no hard links.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


class FileStore(Protocol):
    """The bytes of the instances, by location; the index keeps the locations."""

    def place(self, temp: Path, name: Path) -> str:
        """Keep the complete file ``temp`` at ``name`` or, if taken, a unique name beside it.

        Never replaces what is there (another node may have stored the same
        instance this moment); ``temp`` is gone afterwards. Returns the
        location. Raises OSError.
        """
        ...

    def remove(self, location: str) -> None:
        """Remove the instance at ``location`` (gone already: nothing to do)."""

    def exists(self, location: str) -> bool:
        """Whether the instance at ``location`` is there."""
        ...


class SharedFolder:
    """A :class:`FileStore` on the folder of a :class:`~adicom.DiskStorage` (a shared mount)."""

    def __init__(self, storage: DiskStorage, fsync: bool = False) -> None:
        self.storage = storage
        self.fsync = fsync

    def place(self, temp: Path, name: Path) -> str:
        """Link ``temp`` at ``name``, or under a unique name if taken (see FileStore.place)."""
        storage = self.storage
        storage.ensure_folder(name.parent)
        unique = name.with_name(f"{name.stem}.{uuid.uuid4().hex[:12]}{name.suffix}")
        renamed = False
        try:
            os.link(temp, name)
        except FileExistsError:
            name = unique
            os.link(temp, name)
        except FileNotFoundError:
            # The folder went away behind our back: make it again, once.
            storage.forget_folder(name.parent)
            storage.ensure_folder(name.parent)
            os.link(temp, name)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            # A file system without hard links (some SMB and FUSE mounts): a
            # unique name always, which a rename cannot take from anyone.
            os.rename(temp, unique)
            name, renamed = unique, True
        if not renamed:
            os.unlink(temp)
        if self.fsync:
            fd = os.open(name.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return str(name)

    def remove(self, location: str) -> None:
        """Unlink the file (gone already: nothing to do)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(location)

    def exists(self, location: str) -> bool:
        """Whether the file is there."""
        return os.path.isfile(location)
