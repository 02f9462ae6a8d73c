"""IDX files (the MNIST family's format), gzipped or not: detected by magic bytes, headers validated."""

import gzip
import struct

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path):
    """The file's content, decompressed when it starts with the gzip magic."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e}): download the file again") from None


def parse_idx(raw, path):
    """An ndarray from IDX bytes, checking magic, dimensions and size against the header."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex() or 'empty'}): "
                        "pass the MNIST-format files (e.g. train-images-idx3-ubyte[.gz])")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes): download the file again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX size mismatch: header {dims} needs {expected} bytes, file has {len(raw)}: "
                        "the file is truncated or corrupt; download it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path):
    """The array stored in IDX file PATH (gzipped or not)."""
    return parse_idx(read_bytes(path), path)
