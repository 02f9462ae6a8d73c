"""``load_trained(path)``: the one way to load a trained model, for every command that reads one (``eval``,
``noise``, ``plot --boundary``) and for Python scripts.

PATH is a checkpoint file, or a folder that ``distnet train --checkpoint-dir`` wrote (its newest valid
checkpoint: damaged newer ones are passed over and named in ``skipped``). The file is read once and its
checksum verified; the model is rebuilt from the training config the checkpoint holds. No collectives: any
rank may fail here.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import build
from .. import checkpoint as ckpt
from .. import config as C
from ..errors import UserError


@dataclass
class Trained:
    path: str  # the checkpoint file read
    config: dict  # the resolved training config it holds
    meta: dict  # its root attributes (position, dataset, input shape, ...)
    model: object  # the rebuilt ``Sequential`` with the trained parameters
    loss: object  # the training loss (its ``probabilities`` turn outputs into class probabilities)
    skipped: list = field(default_factory=list)  # [(damaged path, reason, the file used instead)]

    @property
    def input_shape(self):
        return tuple(self.meta.get("input_shape", self.model.input_shape))

    def warnings(self):
        """One line for each damaged checkpoint passed over."""
        return [ckpt.skipped_line(bad, reason, chosen) for bad, reason, chosen in self.skipped]

    def check_data(self, ds, data_dir, what="pass the dataset it was trained on"):
        """Refuse a dataset whose inputs or classes do not fit this model (one line naming both)."""
        if tuple(ds.input_shape) != self.input_shape:
            raise UserError(f"{data_dir} has inputs of shape {tuple(ds.input_shape)} but {self.path} was "
                            f"trained on {self.input_shape}: {what}")
        outputs = int(np.prod(self.model.output_shape))
        if outputs != ds.num_classes and not (outputs == 1 and ds.num_classes == 2):
            raise UserError(f"{self.path} has {outputs} outputs but {data_dir} has {ds.num_classes} classes: "
                            f"{what}")

    def data_path(self):
        """The prepared dataset folder the model was trained on (from its config)."""
        return C.data_path(self.config)


def resolve(path, skipped=None):
    """(file, contents) for PATH: the file itself, or the newest valid checkpoint in a folder (damaged newer
    ones passed over are appended to SKIPPED as (path, reason, the file chosen)). ``contents`` is the
    verified ``read_verified`` pair."""
    if Path(path).is_dir():
        newest, contents, passed = ckpt.newest_valid(path)
        if newest is None:
            what = "only damaged checkpoints" if passed else "no ckpt-*.h5"
            raise UserError(f"checkpoint folder {path} holds {what}: pass a folder that "
                            "distnet train --checkpoint-dir wrote, or a checkpoint file")
        if skipped is not None:
            skipped.extend((str(bad), reason, str(newest)) for bad, reason in passed)
        return str(newest), contents
    return str(path), ckpt.read_verified(path)


def load_trained(path, command="use"):
    """The ``Trained`` model at PATH (a checkpoint file or folder); COMMAND names what the user was doing in
    the message for a checkpoint without a training config ("evaluate", "measure")."""
    skipped = []
    file, contents = resolve(path, skipped)
    meta = ckpt.meta_of(contents)
    if "config" not in meta:
        raise UserError(f"{file} holds no training config: {command} a checkpoint from distnet train")
    cfg = C.merge(C.defaults(), C.parse_toml(meta["config"], file), file)
    shape = meta.get("input_shape")
    if shape is None:
        raise UserError(f"{file} does not record its input shape: {command} a checkpoint from distnet train")
    model = build.model(cfg, tuple(shape))
    ckpt.read_model_arrays(file, model, contents)
    return Trained(file, cfg, meta, model, build.loss(cfg), skipped)
