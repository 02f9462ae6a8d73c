"""Where distnet writes, checked before it starts: a folder it can create and write in, and a file it may
replace. Found in seconds with one line naming the path and the fix, instead of after an epoch with a
traceback; and nothing distnet did not write is ever overwritten (a mistyped --metrics README.md).
"""

import json
import os
from pathlib import Path

from .errors import UserError


def check_folder(path, what, flag):
    """PATH is a folder, or can be created, and a file can be created in it (the file system is not
    read-only, the permissions allow it). WHAT names it in messages ("checkpoint folder"), FLAG the option
    that sets it. Creates nothing that stays."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose another {flag}")
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"{what} {path} cannot be created: {existing} is a broken link: choose another {flag}")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path} cannot be created: {existing} is a file: choose another {flag}")
    probe = existing / f".distnet-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as e:
        where = "" if existing == path else f" (in {existing}, where it would be created)"
        raise UserError(f"{what} {path} is not writable{where}: {os.strerror(e.errno) if e.errno else e}: "
                        f"choose another {flag} or make it writable") from None


def check_file(path, what, flag, ours):
    """PATH's folder passes ``check_folder``, and an existing PATH is a file that is empty or that
    ``ours(path)`` recognizes as written by distnet; anything else would be lost, so it is a user error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: pass a file name, e.g. {path / 'run.jsonl'}")
    check_folder(path.parent, f"{what} {path}: its folder", flag)
    if path.exists() and path.stat().st_size and not ours(path):
        raise UserError(f"{what} {path} exists and distnet did not write it: choose another {flag} (or move "
                        "the file away)")


def _first_line(path, limit=1 << 16):
    try:
        with open(path, "rb") as f:
            return f.readline(limit)
    except OSError:
        return b""


def is_metrics(path):
    """A metrics file distnet wrote: its first line is a JSON object with an ``event``."""
    try:
        return "event" in json.loads(_first_line(path))
    except (ValueError, TypeError):
        return False


def is_trace(path):
    """A Chrome trace distnet wrote (``{"traceEvents": ...``)."""
    return _first_line(path, 32).startswith(b'{"traceEvents"')


def is_png(path):
    """A PNG file (figures): replacing one picture with another is what --out asks for."""
    return _first_line(path, 8).startswith(b"\x89PNG\r\n")
