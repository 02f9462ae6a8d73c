"""Counter-based random draws: each number is a hash of (seed, epoch, sample's global index, layer, element).

A sequential generator gives a sample a mask that depends on where its batch was cut over ranks and on how far
the stream had run, so a different rank count or a resumed run draws different masks. Here every uniform is a
pure function of its coordinates: a sample gets the same mask on any number of ranks, in any micro-batch, in
any order, and a resumed run continues the masks the uninterrupted one would have drawn.

The hash is SplitMix64's (Stafford's "Mix13" finalizer: two multiplies, three xor-shifts) on uint64 counters.
One key comes from (seed, epoch), a key per layer from that (``layer(i)``, nestable), a key per sample from
the layer key and the sample's global index, and element j of sample s is ``mix64(key_s + (j + 1) * GAMMA)``:
SplitMix64's own output sequence for a stream seeded with ``key_s``. float32 values are the top 24 bits
(``k * 2**-24``), float64 the top 53, so a float32 draw is its float64 draw truncated to 24 bits.

The trainer calls ``model.reseed(Draws(seed, epoch, indices))`` before each micro-batch's forward; ``Sequential``
hands ``draws.layer(i)`` to its layer i.
"""

import threading

import numpy as np

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (2**64 / golden ratio, odd)
C1, C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
CHUNK = 32768  # elements hashed per pass: the two uint64 work arrays (512 KiB) stay in L2 cache

_G, _C1, _C2 = np.uint64(GAMMA), np.uint64(C1), np.uint64(C2)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)
# dtype -> (bits dropped, scale, whether the last xor-shift matters: it never reaches the top 24 bits)
_FLOAT = {np.dtype(np.float32): (np.uint64(40), np.float32(2.0 ** -24), False),
          np.dtype(np.float64): (np.uint64(11), np.float64(2.0 ** -53), True)}
_work = threading.local()


def mix64(z):
    """SplitMix64's finalizer of a Python int (mod 2**64): a bijection that mixes every bit into every bit."""
    z &= M64
    z = ((z ^ (z >> 30)) * C1) & M64
    z = ((z ^ (z >> 27)) * C2) & M64
    return z ^ (z >> 31)


def absorb(key, value):
    """A new key from ``key`` and an integer (negative ones taken mod 2**64)."""
    return mix64(((key ^ (value & M64)) + GAMMA) & M64)


def _mix64_array(z, t):
    """mix64 of uint64 array ``z`` in place (``t``: work array of its shape), without the final xor-shift."""
    np.right_shift(z, _S30, out=t)
    z ^= t
    z *= _C1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _C2


def _work_arrays(size):
    """Two reused uint64 work arrays of ``size`` elements (one pair per thread): no page faults per call."""
    if getattr(_work, "z", None) is None or _work.z.size != size:
        _work.z, _work.t = np.empty(size, np.uint64), np.empty(size, np.uint64)
    return _work.z, _work.t


class Draws:
    """Uniform draws for a batch of samples with global indices ``index``, keyed by (seed, epoch, layer path).

    ``uniform(shape, dtype)`` returns an (n, *shape) array whose element (s, j) depends only on (seed, epoch,
    index[s], layer path, j): the rows of a sub-batch are the whole batch's rows of the same indices.
    """

    def __init__(self, seed, epoch, index, _path=(), _key=None):
        self.seed, self.epoch, self.path = int(seed), int(epoch), tuple(_path)
        index = np.asarray(index)
        if index.ndim != 1 or not (index.size == 0 or np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"Draws needs a 1-D integer array of global sample indices, got {index.dtype} "
                             f"shape {index.shape}")
        self.index = index.astype(np.int64, copy=False)
        self.key = absorb(absorb(0, self.seed), self.epoch) if _key is None else _key
        self._sample_keys = None

    def __len__(self):
        return len(self.index)

    def layer(self, i):
        """These draws bound to layer ``i`` (of the layer they are bound to now, for nested models)."""
        return Draws(self.seed, self.epoch, self.index, (*self.path, int(i)), absorb(self.key, int(i)))

    def sample_keys(self):
        """One well-mixed uint64 key per sample: mix64 of (layer key ^ index) + GAMMA, as ``absorb``."""
        if self._sample_keys is None:
            z = self.index.view(np.uint64) ^ np.uint64(self.key)
            z += _G
            t = np.empty_like(z)
            _mix64_array(z, t)
            np.right_shift(z, _S31, out=t)
            z ^= t
            self._sample_keys = z
        return self._sample_keys

    def uniform(self, shape=(), dtype=np.float32):
        """Uniform numbers in [0, 1) of shape (n, *shape), float32 (24 random bits) or float64 (53)."""
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT:
            raise ValueError(f"Draws.uniform makes float32 or float64, not {dtype}")
        n, m = len(self.index), int(np.prod(shape, dtype=np.int64))
        out = np.empty((n, m), dtype)
        if out.size:
            self._fill(out, *_FLOAT[dtype])
        return out.reshape(n, *shape)

    def _fill(self, out, shift, scale, last_xorshift):
        """Hash block after block of ``out`` (n, m) into it, each block small enough to stay in cache."""
        n, m = out.shape
        keys = self.sample_keys()
        counters = (np.arange(1, m + 1, dtype=np.uint64) * _G)  # (j + 1) * GAMMA mod 2**64
        rows = max(1, CHUNK // m)
        cols = -(-m // -(-m // CHUNK))  # m split into equal column blocks of at most CHUNK
        zw, tw = _work_arrays(CHUNK)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            for c0 in range(0, m, cols):
                c1 = min(m, c0 + cols)
                z = zw[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
                t = tw[:z.size].reshape(z.shape)
                np.add(keys[r0:r1, None], counters[None, c0:c1], out=z)
                _mix64_array(z, t)
                if last_xorshift:
                    np.right_shift(z, _S31, out=t)
                    z ^= t
                z >>= shift
                block = out[r0:r1, c0:c1]
                np.copyto(block, z.view(np.int64), casting="unsafe")  # exact: fewer than 2**53 (2**24) values
                block *= scale

    def __repr__(self):
        path = "".join(f".layer({i})" for i in self.path)
        return f"Draws(seed={self.seed}, epoch={self.epoch}, {len(self)} samples){path}"
