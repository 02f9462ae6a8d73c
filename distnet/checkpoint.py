"""Checkpoints: HDF5 files written atomically (temporary file + rename) by rank 0. No pickle.

Layout of a training checkpoint::

    /model/params             the flat parameter arena
    /model/buffers/<i.name>   non-trained state (BatchNorm running statistics)
    /optimizer/<key>          optimizer state arrays; scalars as attributes of /optimizer
    attrs: format_version, config (TOML text of the resolved config), epoch, step_in_epoch, global_step,
           seed, global_batch, dataset, input_shape, num_classes, best_metric, bad_evals, world_size, ...

Nothing in it depends on the rank count, so a run can resume on a different number of ranks. The data
position is (epoch, step_in_epoch) of the global order; every random draw is keyed by (seed, epoch, step),
so the seed is the whole RNG state.
"""

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from .errors import UserError

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{9})\.h5$")


def write_h5_atomic(path, arrays, attrs=None, groups_attrs=None):
    """Write ``arrays`` (path-in-file -> array) and root ``attrs`` to ``path`` via a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=np.asarray(value))
            for key, value in (attrs or {}).items():
                f.attrs[key] = _attr(value)
            for group, gattrs in (groups_attrs or {}).items():
                g = f.require_group(group)
                for key, value in gattrs.items():
                    g.attrs[key] = _attr(value)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _attr(value):
    if isinstance(value, (dict, list, tuple)) and not isinstance(value, np.ndarray):
        return json.dumps(value)
    if value is None:
        return "null"
    return value


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass a file written by 'distnet train' or model.save")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"checkpoint {path} is not a readable HDF5 file (truncated or corrupt): "
                        "delete or move it to use the one before it") from None


def read_model_arrays(path, model):
    """Load parameters and buffers from ``path`` into ``model`` (in place, keeping the arena's views)."""
    with _open(path) as f:
        if "model/params" not in f:
            raise UserError(f"checkpoint {path} has no model/params: not a distnet checkpoint")
        params = f["model/params"]
        if params.shape != model.params_flat.shape:
            raise UserError(f"checkpoint {path} holds {params.shape[0]:,} parameters but the model has "
                            f"{model.num_params:,}: use the config the checkpoint was trained with")
        model.params_flat[...] = params[...]
        for key, buf in model.buffers.items():
            name = f"model/buffers/{key}"
            if name in f:
                buf[...] = f[name][...]


def save_training(path, model, optimizer, meta):
    """Write a full training checkpoint (model, optimizer state, position, config) atomically."""
    arrays = {f"model/{k}": v for k, v in model.state_arrays().items()}
    scalars = {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, np.ndarray):
            arrays[f"optimizer/{key}"] = value
        else:
            scalars[key] = value
    attrs = dict(meta, format_version=FORMAT_VERSION)
    write_h5_atomic(path, arrays, attrs=attrs, groups_attrs={"optimizer": scalars})


def load_training(path, model, optimizer):
    """Restore model and optimizer from ``path``; returns the checkpoint's metadata dict."""
    read_model_arrays(path, model)
    with _open(path) as f:
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise UserError(f"checkpoint {path} has format version {version}, this distnet reads "
                            f"{FORMAT_VERSION}: resume with the distnet version that wrote it")
        state = {k: v[...] for k, v in f["optimizer"].items()} if "optimizer" in f else {}
        if "optimizer" in f:
            state.update({k: _from_attr(v) for k, v in f["optimizer"].attrs.items()})
        meta = {k: _from_attr(v) for k, v in f.attrs.items()}
    if optimizer is not None:
        optimizer.load_state_dict(state)
    return meta


def read_meta(path):
    """The root attributes of a checkpoint (config text, position, dataset...)."""
    with _open(path) as f:
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
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune(directory, keep):
    """Delete all but the newest ``keep`` step checkpoints (``best.h5`` is never touched)."""
    if keep and keep > 0:
        for p in list_checkpoints(directory)[:-keep]:
            p.unlink(missing_ok=True)
