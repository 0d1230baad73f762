"""Files appear whole or not at all: every file fxai writes goes through :func:`write_atomic`.

The content is written to a temporary file beside the target (same folder, so the final rename is atomic on
POSIX and Windows), flushed to disk, then renamed over the target. An error or an interrupt removes the
temporary file and leaves any previous version of the target as it was. A full disk is reported as one line
naming the file.

    >>> write_json("out/results.json", {"auc": 0.5})
    'out/results.json'
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable

__all__ = ["DiskFullError", "remove_leftovers", "write_atomic", "write_json", "write_text"]


class DiskFullError(OSError):
    """The disk filled up while a file was written; the file was not replaced."""


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save and safetensors report a failed write from C++ as a RuntimeError
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ("No space left", "file write failed"))


def write_atomic(path, write: Callable[[str], object]) -> str:
    """Call ``write(temporary_path)``, then move the file to ``path``; returns ``path``. Parents are created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(err):
            raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path}; "
                                              "the previous file, if any, is unchanged") from None
        raise
    return path


def remove_leftovers(path) -> None:
    """Remove the temporary files a killed writer of ``path`` left beside it (only one writer may run)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
                os.remove(os.path.join(folder, entry))


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return write_atomic(path, write)


def write_json(path, obj, **dump_options) -> str:
    """Write ``obj`` as JSON to ``path`` atomically (``indent=1, sort_keys=True`` unless given)."""
    options = {"indent": 1, "sort_keys": True, **dump_options}
    return write_text(path, json.dumps(obj, **options))
