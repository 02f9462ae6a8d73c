"""Arrays read a block of rows at a time, so that an import never holds a source whole.

A ``Rows`` has ``shape`` and ``dtype`` like an array; ``rows[lo:hi]`` is another ``Rows`` (nothing read) and
``np.asarray(rows[lo:hi])`` reads those rows. The writer (``distnet.data.writer``) takes it where it takes an
array. Sources: a file region read with ``pread`` (``.npy``, an uncompressed ``.npz`` member, the scratch file
of a CSV or an image folder: read into fresh buffers, so nothing of the file stays mapped in the process, as
it would through ``np.memmap``), and an HDF5 dataset (h5py reads a slice, chunk by chunk).
"""

import os

import numpy as np


class Rows:
    """Rows of an array read on demand: subclasses define ``shape``, ``dtype`` and ``read(lo, hi)``."""

    shape = ()
    dtype = np.dtype(np.float32)

    def read(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self):
        return self.shape[0]

    ndim = property(lambda self: len(self.shape))
    row_bytes = property(lambda self: max(1, int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize))
    nbytes = property(lambda self: len(self) * self.row_bytes)

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                raise IndexError("Rows take contiguous slices only")
            return View(self, lo, max(lo, hi))
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self.read(i, i + 1)[0]
        raise TypeError(f"Rows take an int or a slice, not {type(key).__name__}")

    def __array__(self, dtype=None, copy=None):
        a = self.read(0, len(self))
        return a if dtype is None else a.astype(dtype, copy=False)

    def blocks(self, rows):
        """(lo, array of rows lo..lo+ROWS) for the whole array, in order."""
        for lo in range(0, len(self), rows):
            yield lo, self.read(lo, min(lo + rows, len(self)))

    def close(self):
        pass


class View(Rows):
    """Rows LO..HI of another Rows."""

    def __init__(self, base, lo, hi):
        self.base, self.lo = base, lo
        self.shape, self.dtype = (hi - lo, *base.shape[1:]), base.dtype

    def read(self, lo, hi):
        return self.base.read(self.lo + lo, self.lo + hi)


class FileRows(Rows):
    """An array stored C-ordered at OFFSET in the file at PATH (a .npy body, a raw scratch file)."""

    def __init__(self, path, offset, shape, dtype):
        self.path, self.offset = path, offset
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.fd = None

    def read(self, lo, hi):
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        if out.nbytes == 0:
            return out
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        view, got, start = memoryview(out.reshape(-1).view(np.uint8)), 0, self.offset + lo * self.row_bytes
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], start + got)
            if n == 0:
                raise OSError(f"{self.path} ends {len(view) - got} bytes early (changed while reading?)")
            got += n
        return out

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class H5Rows(Rows):
    """An HDF5 dataset (h5py reads the rows asked for, decompressing the chunks they touch)."""

    def __init__(self, dset):
        self.dset, self.shape, self.dtype = dset, tuple(dset.shape), dset.dtype

    def read(self, lo, hi):
        return self.dset[lo:hi]


class ArrayRows(Rows):
    """An array already in memory (or memory-mapped by the caller)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, tuple(a.shape), a.dtype

    def read(self, lo, hi):
        return np.asarray(self.a[lo:hi])


def rows_of(a):
    """A Rows for A: itself when it is one, else ArrayRows."""
    return a if isinstance(a, Rows) else ArrayRows(np.asarray(a) if not hasattr(a, "shape") else a)


class Converted(Rows):
    """BASE as an import stores it: DTYPE, 1-D samples as one feature, 2-D samples (H, W) as one channel
    (1, H, W), and (H, W, C) images moved to (C, H, W) when CHANNELS_LAST."""

    def __init__(self, base, dtype, channels_last=False):
        self.base, self.dtype, self.channels_last = base, np.dtype(dtype), channels_last
        sample = tuple(base.shape[1:])
        if len(sample) == 0:
            sample = (1,)
        elif len(sample) == 2:
            sample = (1, *sample)
        elif channels_last and len(sample) == 3:
            sample = (sample[2], sample[0], sample[1])
        self.shape = (base.shape[0], *sample)

    def read(self, lo, hi):
        a = np.asarray(self.base.read(lo, hi))
        if self.channels_last and a.ndim == 4:
            a = a.transpose(0, 3, 1, 2)
        a = a.reshape(len(a), *self.shape[1:])
        return np.ascontiguousarray(a, dtype=self.dtype)


class Subset(Rows):
    """Rows ROWS (sorted, unique) of BASE, read BLOCK rows of BASE at a time."""

    def __init__(self, base, rows, block):
        self.base, self.rows, self.block = base, np.asarray(rows, np.int64), max(1, int(block))
        self.shape, self.dtype = (len(self.rows), *base.shape[1:]), base.dtype

    def read(self, lo, hi):
        want = self.rows[lo:hi]
        out = np.empty((len(want), *self.shape[1:]), self.dtype)
        p = 0
        while p < len(want):
            a = int(want[p])
            b = min(a + self.block, int(want[-1]) + 1)
            q = int(np.searchsorted(want, b))
            np.take(np.asarray(self.base.read(a, b)), want[p:q] - a, axis=0, out=out[p:q])
            p = q
        return out


class ScratchFile:
    """A raw file of rows appended block by block (a CSV's parsed features, an image folder's pixels), read
    back as FileRows."""

    def __init__(self, path, sample_shape, dtype):
        self.path, self.sample_shape, self.dtype = path, tuple(sample_shape), np.dtype(dtype)
        self.file, self.count = open(path, "wb"), 0

    def append(self, block):
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.sample_shape:
            raise ValueError(f"rows of shape {block.shape[1:]} appended to rows of {self.sample_shape}")
        self.file.write(memoryview(block.reshape(-1).view(np.uint8)))
        self.count += len(block)

    def finish(self):
        """The rows written, as FileRows."""
        self.file.close()
        return FileRows(self.path, 0, (self.count, *self.sample_shape), self.dtype)
