"""Checkpoints: HDF5 files written atomically (temporary file + rename) by rank 0. No pickle.

Layout of a training checkpoint::

    /model/params             the flat parameter arena
    /model/buffers/<i.name>   non-trained state (BatchNorm running statistics)
    /optimizer/<key>          optimizer state arrays; scalars as attributes of /optimizer
    attrs: format_version, config (TOML text of the resolved config), epoch, step_in_epoch, global_step,
           seed, global_batch, dataset, input_shape, num_classes, best_metric, bad_evals, world_size, ...,
           sha256 (see ``checksum``)

Nothing in it depends on the rank count, so a run can resume on a different number of ranks. The data
position is (epoch, step_in_epoch) of the global order; every random draw is keyed by (seed, epoch, step),
so the seed is the whole RNG state.

Integrity: every file carries the SHA-256 of its arrays and attributes; reading verifies it in the same
pass that loads the arrays. A damaged or truncated newest checkpoint is skipped for the one before it
(``latest_valid``), and a failed write (disk full, I/O error) leaves the files already there untouched: the
new file is a temporary one until complete, and ``prune`` runs only after it was renamed into place.
"""

import hashlib
import io
import json
import os
import re
from contextlib import suppress
from pathlib import Path

import h5py
import numpy as np

from .errors import UserError

FORMAT_VERSION = 1
CHECKSUM = "sha256"  # the root attribute holding ``checksum``; files written before it have none
_NAME = re.compile(r"^ckpt-(\d{9})\.h5$")
_TEMPORARY = re.compile(r"^\.(ckpt-\d{9}|best)\.h5\.tmp-\d+$")


class WriteError(UserError):
    """A checkpoint could not be written (disk full, read-only, I/O error): the environment, not a bug, so
    exit code 2 (a supervisor does not restart into the same full disk). Files already there are intact."""

    def __init__(self, path, reason):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


class Damaged(UserError):
    """A checkpoint that cannot be read back as written: truncated, corrupt, or its checksum differs."""

    message = "checkpoint {path} is damaged ({reason}): delete or move it to use the one before it"

    def __init__(self, path, reason):
        super().__init__(self.message.format(path=path, reason=reason))
        self.path, self.reason = path, reason


class NotCheckpoint(Damaged):
    """A file that is not HDF5 at all (a metrics file, a README given by mistake), or HDF5 without a model (a
    dataset shard): telling the user to delete it, as for a damaged checkpoint, would be wrong. A ``Damaged``
    still, so that a ``ckpt-*.h5`` in a checkpoint folder that is not one is passed over like any unreadable one."""

    message = "{path} is not a distnet checkpoint ({reason}): give a checkpoint file or a checkpoint folder"

    def __init__(self, path, reason="not an HDF5 file"):
        super().__init__(path, reason)


def checksum(arrays, attrs):
    """SHA-256 (hex) of a checkpoint's contents: ``arrays`` (path in file -> array) and ``attrs`` ((group
    path, "" for the root) -> {name: value}), each in name order, the checksum attribute left out. Arrays
    count with their name, dtype and shape; attribute values as stored (strings, or NumPy scalars/arrays),
    so the same value hashes alike before writing and after reading."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"array {key} {a.dtype.str} {a.shape}\n".encode())
        h.update(a.reshape(-1).view(np.uint8))
    for group in sorted(attrs):
        for key in sorted(attrs[group]):
            if group == "" and key == CHECKSUM:
                continue
            h.update(f"attr {group}/{key} ".encode() + _canonical(attrs[group][key]) + b"\n")
    return h.hexdigest()


def _canonical(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return b"s" + value.encode()
    a = np.asarray(value)
    return f"a{a.dtype.str}{a.shape}".encode() + a.tobytes()


def write_h5_atomic(path, arrays, attrs=None, groups_attrs=None):
    """Write ``arrays`` (path-in-file -> array), root ``attrs`` and ``groups_attrs`` (group -> attrs) to
    ``path`` via a temporary file renamed into place, with their checksum. Raises ``WriteError`` when the
    write fails (the temporary file is removed; an existing ``path`` is unchanged). Only rank 0 writes, so a
    temporary name per process is unique."""
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    stored = {"": {k: _attr(v) for k, v in (attrs or {}).items()}}
    for group, gattrs in (groups_attrs or {}).items():
        stored[group] = {k: _attr(v) for k, v in gattrs.items()}
    stored[""][CHECKSUM] = checksum(arrays, stored)
    # Built in memory, then written with plain file calls: HDF5's own writes fail late and noisily on a full
    # disk (at close, in destructors); a checkpoint is the model and optimizer state, small beside the data.
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for group, gattrs in stored.items():
            g = f.require_group(group) if group else f
            for key, value in gattrs.items():
                g.attrs[key] = value
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(image.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise WriteError(path, _reason(e)) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder):
    """Make a rename durable (a crash right after it keeps the new name); not every file system allows it."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(e):
    """The system's words for a failed write (No space left on device, Read-only file system, ...)."""
    return os.strerror(e.errno) if e.errno else str(e) or type(e).__name__


def _attr(value):
    if isinstance(value, (dict, list, tuple)) and not isinstance(value, np.ndarray):
        return json.dumps(value)
    if value is None:
        return "null"
    return value


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path):
    """Whether ``path`` carries the HDF5 signature: at offset 0, or after a user block (512, 1024, 2048, ...
    bytes, as the format allows). The signature alone decides, whatever the HDF5 library's own check does:
    a truncated checkpoint keeps it and is "damaged", a metrics file never had it and is not a checkpoint."""
    with open(path, "rb") as f:
        size, offset = os.fstat(f.fileno()).st_size, 0
        while offset + len(HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = max(512, 2 * offset)
    return False


def _open(path):
    """The open HDF5 file; ``NotCheckpoint`` for a file that is not HDF5 at all, ``Damaged`` for one that is
    but cannot be opened (truncated or corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass a file written by 'distnet train' or model.save")
    try:
        hdf5 = is_hdf5(path)
    except OSError as e:
        raise Damaged(path, f"unreadable: {_reason(e)}") from None
    if not hdf5:
        raise NotCheckpoint(path)
    try:
        return h5py.File(path, "r")
    except OSError:
        raise Damaged(path, "truncated or corrupt HDF5") from None


def read_verified(path):
    """(arrays, attrs) of a checkpoint read in one pass, as ``checksum`` takes them, after verifying its
    checksum (files from before checksums are taken as they are). Raises ``Damaged``."""
    arrays, attrs = {}, {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[name] = obj[...]
        elif len(obj.attrs):
            attrs[name] = dict(obj.attrs)

    with _open(path) as f:
        try:
            attrs[""] = dict(f.attrs)
            f.visititems(visit)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Damaged(path, f"unreadable: {first}") from None
    if "model/params" not in arrays:  # HDF5, but another program's file or a dataset shard
        raise NotCheckpoint(path, "an HDF5 file without model/params")
    stored = _from_attr(attrs[""].get(CHECKSUM, ""))
    if stored and checksum(arrays, attrs) != stored:
        raise Damaged(path, "its checksum does not match its contents")
    return arrays, attrs


def read_model_arrays(path, model, contents=None):
    """Load parameters and buffers from ``path`` (or its ``read_verified`` ``contents``) into ``model`` (in
    place, keeping the arena's views)."""
    arrays, _ = contents or read_verified(path)
    if "model/params" not in arrays:
        raise UserError(f"checkpoint {path} has no model/params: not a distnet checkpoint")
    params = arrays["model/params"]
    if params.shape != model.params_flat.shape:
        raise UserError(f"checkpoint {path} holds {params.shape[0]:,} parameters but the model has "
                        f"{model.num_params:,}: use the config the checkpoint was trained with")
    model.params_flat[...] = params
    for key, buf in model.buffers.items():
        name = f"model/buffers/{key}"
        if name in arrays:
            buf[...] = arrays[name]


def save_training(path, model, optimizer_state, meta):
    """Write a full training checkpoint (model, the optimizer's ``state_dict()``, position, config) atomically."""
    arrays = {f"model/{k}": v for k, v in model.state_arrays().items()}
    scalars = {}
    for key, value in optimizer_state.items():
        if isinstance(value, np.ndarray):
            arrays[f"optimizer/{key}"] = value
        else:
            scalars[key] = value
    attrs = dict(meta, format_version=FORMAT_VERSION)
    write_h5_atomic(path, arrays, attrs=attrs, groups_attrs={"optimizer": scalars})


def load_training(path, model, optimizer, contents=None):
    """Restore model and optimizer from ``path`` (or its ``read_verified`` ``contents``: the file is read
    once); returns the checkpoint's metadata dict."""
    contents = contents or read_verified(path)
    arrays, attrs = contents
    version = int(attrs[""].get("format_version", -1))
    if version != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, this distnet reads "
                        f"{FORMAT_VERSION}: resume with the distnet version that wrote it")
    read_model_arrays(path, model, contents)
    state = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    state.update({k: _from_attr(v) for k, v in attrs.get("optimizer", {}).items()})
    if optimizer is not None:
        optimizer.load_state_dict(state)
    return {k: _from_attr(v) for k, v in attrs[""].items()}


def meta_of(contents):
    """The root attributes of ``read_verified`` contents, decoded as ``read_meta`` gives them."""
    return {k: _from_attr(v) for k, v in contents[1][""].items()}


def save_model(path, model):
    """Write a model's parameters (and buffers) to an HDF5 file, atomically: what ``load_model`` and
    ``read_model_arrays`` read (no optimizer, no config)."""
    write_h5_atomic(path, {"model/" + k: v for k, v in model.state_arrays().items()},
                    attrs={"num_params": model.num_params, "dtype": str(model.dtype)})


def read_meta(path):
    """The root attributes of a checkpoint (config text, position, dataset...)."""
    with _open(path) as f:
        if "model/params" not in f:  # HDF5, but another program's file or a dataset shard
            raise NotCheckpoint(path, "an HDF5 file without model/params")
        return {k: _from_attr(v) for k, v in f.attrs.items()}


def _from_attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{" or v == "null":
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


def checkpoint_path(directory, global_step):
    return Path(directory) / f"ckpt-{global_step:09d}.h5"


def list_checkpoints(directory):
    """Checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest(directory):
    """The newest checkpoint by name, unverified (``latest_valid`` reads and verifies)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def newest_valid(directory):
    """(path, contents, skipped): the newest checkpoint in ``directory`` that reads back as written, its
    ``read_verified`` contents, and the newer ones passed over as [(path, reason)]; (None, None, skipped)
    when none is valid."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, read_verified(path), skipped
        except Damaged as e:
            skipped.append((path, e.reason))
    return None, None, skipped


def latest_valid(directory):
    """(path, skipped): the newest valid checkpoint in ``directory`` (None if none) and the damaged newer
    ones passed over, as [(path, reason)]. Reads each file it verifies once."""
    path, _, skipped = newest_valid(directory)
    return path, skipped


def skipped_line(path, reason, fallback):
    """The one line said for a damaged checkpoint passed over for ``fallback`` (None: no valid one left)."""
    instead = f"using {fallback} instead" if fallback is not None else "and no valid checkpoint is before it"
    return f"distnet: warning: checkpoint {path} is damaged ({reason}): {instead}"


def remove_temporaries(directory):
    """Delete the temporary files of writes that never finished (a process killed mid-write leaves one);
    called by the run that owns the folder before its first write. Returns their paths."""
    d = Path(directory)
    found = [p for p in d.iterdir() if _TEMPORARY.match(p.name)] if d.is_dir() else []
    for p in found:
        with suppress(OSError):
            p.unlink()
    return found


def prune(directory, keep):
    """Delete all but the newest ``keep`` step checkpoints (``best.h5`` is never touched). Called only after
    a new checkpoint is complete, so the newest kept is always a whole one."""
    if keep and keep > 0:
        for p in list_checkpoints(directory)[:-keep]:
            p.unlink(missing_ok=True)
