"""Atomic file and folder writes: a failed or killed run leaves no half-written output.

Every write goes to a hidden temporary sibling first and is renamed into place at the end:
``.NAME.tmp-HOST-PID-XXXX``. Replacing an existing folder moves the old one to
``.NAME.old-HOST-PID`` for the instant between the two renames. ``HOST`` is a short hash of
the host name and ``PID`` the writing process, so :func:`clean_stale` can tell a temporary
left by a killed process (removed) from one a live process is still writing (left alone).

Folders and files are created with the user's umask (``mkdtemp``/``mkstemp`` alone would give
0700/0600, unreadable to colleagues on a shared machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)(?:-[0-9a-z_]+)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries that killed processes of this host left in ``folder``; returns them.

    A ``.NAME.tmp-*`` is deleted. A ``.NAME.old-*`` (a replace interrupted between its two
    renames) is deleted when ``NAME`` exists, and renamed back to ``NAME`` when it does not,
    so the previous output comes back rather than being lost.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cleaned = []
    for entry in folder.iterdir():
        m = _STALE.match(entry.name)
        if not m or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        target = folder / m["name"]
        if m["what"] == "old" and not target.exists():
            os.replace(entry, target)
            log.warning("restored %s: a run replacing it was killed before it finished", target)
        else:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            log.info("removed %s, left behind by a killed run (pid %s)", entry, m["pid"])
        cleaned.append(entry)
    return cleaned


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink() and not any(p.iterdir())


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``out`` in one rename.

    ``out`` may be missing or an empty folder; a non-empty one is replaced only with
    ``replace=True`` (callers decide that by :func:`seq2seq_rm.outputs.check_output_dir`
    before any work starts). On any exception the temporary folder is removed and ``out``
    is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not _is_empty_dir(out) and not replace:
        raise FileExistsError(f"{out} exists and is not empty; refusing to replace it")
    tmp = out.parent / f".{out.name}.tmp-{_tag()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if out.exists():
            if _is_empty_dir(out):
                out.rmdir()
            else:
                old = out.parent / f".{out.name}.old-{_tag()}"
                os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_tag()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
