"""Array sources: ``.npy`` files, ``.npz`` archives and HDF5 files, opened as Rows (nothing read yet)."""

import shutil
import struct
import zipfile

import h5py
import numpy as np

from ...errors import DataError
from ..layout import listing
from .rows import ArrayRows, FileRows, H5Rows

NPY_MAGIC = b"\x93NUMPY"
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def npy_header(f, where):
    """(shape, dtype) of the .npy stream F positioned at its magic; leaves F at the data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise DataError(f"{where} is not a readable .npy array ({e}): save it with numpy.save") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufUS":
        raise DataError(f"{where} holds {dtype} values: save numbers (or label strings) without objects "
                        "(pickled arrays are never loaded)")
    if fortran and len(shape) > 1:
        raise DataError(f"{where} is stored in Fortran order: save it C-ordered, "
                        "numpy.save(path, numpy.ascontiguousarray(a))")
    if len(shape) == 0:
        raise DataError(f"{where} is a scalar, not an array of samples")
    return shape, dtype


def open_npy(path):
    """A .npy file as FileRows."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != NPY_MAGIC:
                raise DataError(f"{path} is not a .npy file (no NumPy magic at its start): save it with numpy.save")
            f.seek(0)
            shape, dtype = npy_header(f, path)
            offset = f.tell()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    rows = FileRows(path, offset, shape, dtype)
    size = path.stat().st_size
    if len(rows) and offset + rows.nbytes > size:
        raise DataError(f"{path} is truncated: its header says {shape} {dtype} ({offset + rows.nbytes} bytes), "
                        f"the file has {size}")
    return rows


def member_offset(path, info):
    """Where member INFO's bytes start in the zip file PATH (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: damaged zip archive (member {info.filename}): save it again with numpy.savez")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def open_npz_member(path, zf, key, scratch):
    """Member KEY of the .npz PATH as FileRows: read in place when stored uncompressed (numpy.savez), else
    decompressed as a stream into a scratch file first (numpy.savez_compressed)."""
    info = zf.getinfo(f"{key}.npy")
    if info.compress_type == zipfile.ZIP_STORED:
        offset = member_offset(path, info)
        with open(path, "rb") as f:
            f.seek(offset)
            shape, dtype = npy_header(f, f"{path}:{key}")
            data = f.tell()
        rows = FileRows(path, data, shape, dtype)
        if data + rows.nbytes > offset + info.file_size:
            raise DataError(f"{path}: member {key} is shorter than its header says: save it again")
        return rows
    target = scratch() / f"{key}.npy"
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return open_npy(target)


def pick_keys(names, x_key, y_key, src, what):
    """{'train': (x, y), 'test': (x, y)} or {'all': (x, y)}: the keys of NAMES to read."""
    if x_key or y_key:
        missing = [k for k in (x_key or "x", y_key or "y") if k not in names]
        if missing:
            raise DataError(f"{src} has no {what} {missing[0]!r} (it has {listing(sorted(names), 8)}): "
                            f"pass --x KEY --y KEY naming its {what}s")
        return {"all": (x_key or "x", y_key or "y")}
    if all(k in names for k in SPLIT_KEYS):
        return {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    if "x" in names and "y" in names:
        return {"all": ("x", "y")}
    raise DataError(f"{src} has neither x_train, y_train, x_test, y_test nor x, y (it has "
                    f"{listing(sorted(names), 8) or 'nothing'}): pass --x KEY --y KEY naming its {what}s")


def open_npz(path, x_key, y_key, scratch, closers, check=lambda single: None):
    """The sets of an .npz archive as {set: (x Rows, y Rows)}; CHECK(one set only) before reading any."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .npz archive ({e}): save it with numpy.savez") from None
    closers.append(zf.close)
    names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    keys = pick_keys(names, x_key, y_key, path, "array")
    check("all" in keys)
    return {s: (open_npz_member(path, zf, kx, scratch), open_npz_member(path, zf, ky, scratch))
            for s, (kx, ky) in keys.items()}, keys


def h5_datasets(f):
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def open_hdf5(path, x_key, y_key, closers):
    """The sets of an HDF5 file as {set: (x Rows, y Rows)}."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    closers.append(f.close)
    names = set(h5_datasets(f))
    keys = pick_keys(names, x_key, y_key, path, "dataset")
    sets = {}
    for s, (kx, ky) in keys.items():
        dx, dy = f[kx], f[ky]
        if h5py.check_string_dtype(dy.dtype) is not None and dy.ndim == 1:  # label names (variable length)
            y = ArrayRows(np.asarray(dy.asstr()[:], dtype=str))
        else:
            y = H5Rows(dy)
        for k, d in ((kx, dx), (ky, y)):
            if d.dtype.kind not in "biufUS" or len(d.shape) == 0:
                raise DataError(f"{path}: dataset {k!r} holds {d.dtype} {d.shape}: x must be numbers of shape "
                                "(N, ...), y one label per sample")
        sets[s] = (H5Rows(dx), y)
    return sets, keys
