"""distnet: data-parallel neural-network training in NumPy over MPI."""

__version__ = "0.1.0"
