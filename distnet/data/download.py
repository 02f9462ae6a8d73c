"""Fetching catalog files into a cache folder, verifying SHA-256; failing at once when offline."""

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from .layout import file_sha256

TIMEOUT_S = 10


def default_cache(name):
    """Cache folder for dataset NAME: $DISTNET_CACHE/NAME or ~/.cache/distnet/NAME."""
    root = os.environ.get("DISTNET_CACHE") or Path.home() / ".cache" / "distnet"
    return Path(root) / name


def check_sum(path, entry, allow_unverified):
    """Raise unless PATH's SHA-256 equals the catalog's (an unknown sum needs ALLOW_UNVERIFIED)."""
    expected = entry.get("sha256", "")
    if not expected:
        if allow_unverified:
            return
        raise DataError(f"{entry['name']}: the catalog has no SHA-256 for this file, so it cannot be verified: "
                        "pass --allow-unverified to accept it anyway")
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(f"{path}: SHA-256 mismatch (got {actual}, catalog says {expected}): "
                        "the download is corrupt or the mirror changed; delete it and retry, or pass --source DIR")


def fetch_one(url, target, timeout):
    """Download URL to TARGET via a temporary file; DataError naming the fix when it cannot."""
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            for block in iter(lambda: resp.read(1 << 20), b""):
                f.write(block)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download {url} ({reason}): if this machine is offline, copy the files "
                        "into a folder yourself and pass --source DIR") from None
    except BaseException:  # a stop signal (distnet.signals): no half-downloaded file is left
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)


def fetch_from_any(bases, name, target, timeout):
    """Try each mirror in turn; raise the first mirror's error when none answers."""
    errors = []
    for base in bases:
        try:
            return fetch_one(base.rstrip("/") + "/" + name, target, timeout)
        except DataError as e:
            errors.append(e)
    raise errors[0]


def fetch(manifest, cache, mirrors=None, allow_unverified=False, timeout=TIMEOUT_S):
    """Every file of MANIFEST in folder CACHE (reusing verified copies); returns CACHE."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    bases = mirrors or manifest.get("mirrors", [])
    if not bases:
        raise DataError(f"{manifest['name']}: the catalog lists no download address: pass --source DIR")
    for entry in manifest["files"].values():
        target = cache / entry["name"]
        if target.exists() and entry.get("sha256") and file_sha256(target) == entry["sha256"]:
            continue
        fetch_from_any(bases, entry["name"], target, timeout)
        try:
            check_sum(target, entry, allow_unverified)
        except DataError:
            target.unlink(missing_ok=True)
            raise
    return cache
