"""Result files that appear whole or not at all: written under a temporary name, then renamed."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temporary file beside `path`, then rename it to `path`.
    A crash or an error leaves the old file (or none), never a partial one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # a new file of the usual mode (0666 less the umask) without reading the umask, which
    # is shared by every thread of the process
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2).encode() + b"\n"))
