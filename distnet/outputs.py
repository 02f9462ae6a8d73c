"""Where distnet writes, checked before it starts: a folder it can create and write in, and a file it may
replace. Found in seconds with one line naming the path and the fix, instead of after an epoch with a
traceback; and nothing distnet did not write is ever overwritten (a mistyped --metrics README.md).

Every output a user names goes through here before any work: the checkpoint folder, metrics and trace files
(the config's ``Output`` keys: ``check_output``), figures (``check_figure``, ``check_figures``) and the
calibration file. A path on a pseudo file system (/proc, /sys) is refused; so is an existing device, pipe or
socket where the file is replaced by a rename (a trace, a figure); where it is appended to (metrics), a
device must take a write (``/dev/full`` does not: no space left on device).
"""

import json
import os
import re
import stat
from pathlib import Path

from .errors import UserError

# file systems that hold no files of one's own: kernel interfaces (writing there changes the system, or fails)
PSEUDO_FILESYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs",
                      "configfs", "bpf", "pstore", "efivarfs", "fusectl", "binfmt_misc", "mqueue", "nsfs",
                      "rpc_pipefs", "autofs"}


def _mount(path):
    """(mount point, file system type) of the mount holding existing PATH, from /proc/self/mountinfo; (None,
    None) where that cannot be read (not Linux)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, None
    real = os.path.realpath(path)
    found = (None, None)
    for line in lines:
        fields = line.split()
        try:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            kind = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (found[0] is None or len(point) >= len(found[0])):  # the innermost, the last mounted
            found = (point, kind)
    return found


def _not_pseudo(existing, path, what, flag):
    point, kind = _mount(existing)
    if kind in PSEUDO_FILESYSTEMS:
        raise UserError(f"{what} {path} is on the {kind} file system at {point}, which holds no files to write: "
                        f"choose another {flag}")


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
    _not_pseudo(existing, path, what, flag)
    probe = existing / f".distnet-probe-{os.getpid()}"
    try:  # one byte written: a full disk says so now (creating an empty file would still work)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        where = "" if existing == path else f" (in {existing}, where it would be created)"
        raise UserError(f"{what} {path} is not writable{where}: {os.strerror(e.errno) if e.errno else e}: "
                        f"choose another {flag} or make it writable") from None


def check_file(path, what, flag, ours, replaced=False):
    """PATH's folder passes ``check_folder``, and an existing PATH is a file that is empty or that
    ``ours(path)`` recognizes as written by distnet; anything else would be lost, so it is a user error.
    An existing PATH that is no regular file (a device, a pipe): ``replaced`` (distnet renames a new file over
    it) refuses it; else it must take a write (``/dev/null`` does, ``/dev/full`` does not)."""
    path = Path(path)
    if "\0" in str(path):
        raise UserError(f"{what} {str(path)!r} holds a NUL character: choose another {flag}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: pass {flag} a file name, e.g. {path / 'run.jsonl'}")
    if path.exists() and not path.is_file():
        return _check_special(path, what, flag, replaced)
    check_folder(path.parent, f"{what} {path}: its folder", flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable: choose another {flag} or make it writable")
    if path.exists() and path.stat().st_size and not ours(path):
        raise UserError(f"{what} {path} exists and distnet did not write it: choose another {flag} (or move "
                        "the file away)")


def _check_special(path, what, flag, replaced):
    """An existing PATH that is not a regular file: a character device or a pipe that takes a write, unless
    distnet replaces the file (then nothing but a file will do)."""
    mode = path.stat().st_mode
    kind = ("a character device" if stat.S_ISCHR(mode) else "a pipe" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) else "not a regular file")
    if replaced or not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise UserError(f"{what} {path} is {kind}, not a file (distnet writes a new file and renames it into "
                        f"place): choose a file name for {flag}")
    try:  # an empty write: /dev/full refuses even that; O_NONBLOCK: a pipe without a reader fails, not waits
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"")
        finally:
            os.close(fd)
    except OSError as e:
        raise UserError(f"{what} {path} ({kind}) cannot be written: {os.strerror(e.errno) if e.errno else e}: "
                        f"choose another {flag}") from None


def check_output(path, spec):
    """PATH for a config key that distnet writes, as its ``schema.Output`` spec says (a folder or a file)."""
    if spec.kind == "folder":
        if "\0" in str(path):
            raise UserError(f"{spec.what} {str(path)!r} holds a NUL character: choose another {spec.flag}")
        return check_folder(path, spec.what, spec.flag)
    return check_file(path, spec.what, spec.flag, globals()[spec.ours], replaced=spec.replaced)


def check_figure(path, flag="--out"):
    """A PNG file a figure may be written to (a picture replaced by another is what --out asks for)."""
    if not str(path).lower().endswith(".png"):
        raise UserError(f"{flag} {path}: figures are written as PNG: give a file name ending in .png")
    check_file(path, "figure", flag, is_png, replaced=True)


def check_figures(folder, names, flag):
    """A folder figures NAMES (file names) may be written into: the folder can be created and written in, and
    no file of those names is anything but a picture."""
    check_folder(folder, "figure folder", flag)
    for name in names:
        check_file(Path(folder) / name, "figure", flag, is_png, replaced=True)


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
