"""Keeping replicas alike: a hash check of the parameters and averaging of non-trained buffers."""

import numpy as np


class ReplicaMismatch(RuntimeError):
    exit_code = 1


def check_replicas(w, model, when):
    """Stop with a clear message if the model's parameters differ between ranks (collective)."""
    if w.size == 1:
        return
    hashes = w.allgather(model.param_hash())
    if len(set(hashes)) != 1:
        bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
        raise ReplicaMismatch(f"model replicas differ {when}: ranks {bad} disagree with rank 0 (the ranks run "
                              "different numpy/BLAS builds or a layer draws unseeded random numbers)")


def average_buffers(w, model):
    """Average non-trained state (BatchNorm running statistics) over ranks, so replicas agree (collective)."""
    if w.size == 1 or not model.buffers:
        return
    bufs = list(model.buffers.values())
    flat = np.concatenate([b.ravel().astype(np.float64) for b in bufs])
    w.allreduce(flat)
    flat /= w.size
    offset = 0
    for b in bufs:
        b[...] = flat[offset:offset + b.size].reshape(b.shape)
        offset += b.size
