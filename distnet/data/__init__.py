"""Datasets: preparing HDF5 shards, opening and validating them, the sampler and the batch reader."""

from .augment import Augment
from .dataset import Dataset, Split, fingerprint, fingerprint_difference, holdout, open_dataset
from .reader import BatchReader
from .sampler import Sampler, eval_partition

__all__ = ["Augment", "BatchReader", "Dataset", "Sampler", "Split", "eval_partition", "fingerprint",
           "fingerprint_difference", "holdout", "open_dataset"]
