"""Your own data, end to end: make a CSV (two noisy interleaved moons, a label column by name), import it as
a prepared dataset, and train an MLP on it, alone or on several ranks:

    python examples/csv_train.py runs/moons
    mpiexec -n 2 python examples/csv_train.py runs/moons

The import is what ``distnet data import moons.csv --out DIR --label-column label --test-fraction 0.2`` does;
rank 0 makes the files, the others wait for it, then every rank trains (distnet.train is ``distnet train``).
"""

import sys
from pathlib import Path

import numpy as np

import distnet
from distnet import comm
from distnet.data.imports import import_data

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/moons")
w = comm.world()
if w.rank == 0 and not (folder / "data").exists():
    rng = np.random.default_rng(0)
    n = 2000
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(t), 1 - np.cos(t)) + rng.normal(0, 0.1, n)
    y = np.where(label == 0, np.sin(t), 0.5 - np.sin(t)) + rng.normal(0, 0.1, n)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "moons.csv", "w") as f:
        f.write("x,y,label\n")
        f.writelines(f"{a:.5f},{b:.5f},{'upper' if c == 0 else 'lower'}\n" for a, b, c in zip(x, y, label))
    import_data(folder / "moons.csv", folder / "data", label_column="label", test_fraction=0.2)
w.barrier()  # every rank reads the folder rank 0 wrote

result = distnet.train({"extends": "spirals-mlp", "train": {"epochs": 10}, "log": {"quiet": True}},
                   overrides={"data": {"path": str(folder / "data")}})
if w.rank == 0:
    print(f"{result.summary['ranks']} rank(s): test accuracy {result.summary['last_accuracy']:.3f} after "
          f"{result.summary['steps']} steps")
