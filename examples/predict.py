"""Load a trained checkpoint and predict: inputs as stored in the dataset (uint8 pixels for Fashion-MNIST),
converted by the model as it was trained.

    distnet train fashion-mlp --data data/fashion-mnist --epochs 1 --checkpoint-dir runs/mlp
    python examples/predict.py runs/mlp data/fashion-mnist
"""

import sys

import numpy as np

import distnet
from distnet.data import BatchReader, open_dataset

checkpoint, data = sys.argv[1], sys.argv[2]
model = distnet.load(checkpoint)  # a checkpoint file, or the folder: its newest valid checkpoint
test = open_dataset(data)["test"]
with BatchReader(test, mode="memory") as reader:
    x, y = reader.raw(np.arange(min(1000, len(test))))  # the first 1000 inputs as stored, and their labels
probs = model.predict_proba(x)
pred = probs.argmax(axis=1)
print(f"{model.path}: accuracy {np.mean(pred == y):.4f} on {len(y)} test samples")
for i in range(3):
    print(f"  sample {i}: {model.class_names[pred[i]]} ({probs[i, pred[i]]:.2f}), truly {model.class_names[y[i]]}")
