"""Datasets: preparing HDF5 shards, opening and validating them, the sampler and the batch reader."""

from .augment import Augment
from .dataset import Dataset, Split, fingerprint, fingerprint_difference, holdout, open_dataset
from .reader import BatchReader
from .sampler import Sampler, eval_partition


def write_dataset(out, x_train, y_train, x_test=None, y_test=None, **options):
    """Arrays in memory to a prepared dataset at OUT (see ``distnet.data.imports.write_arrays``)."""
    from .imports import write_arrays as write

    return write(out, x_train, y_train, x_test, y_test, **options)

__all__ = ["Augment", "BatchReader", "Dataset", "Sampler", "Split", "eval_partition", "fingerprint",
           "fingerprint_difference", "holdout", "open_dataset", "write_dataset"]
