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

    @property
    def class_names(self):
        return tuple(self.meta.get("class_names") or range(int(self.meta.get("num_classes", 0))))

    def take_inputs_from(self, data=None):
        """Take the input conversion (scale, training statistics) from the prepared dataset DATA (default:
        the one in its config): for checkpoints written before distnet stored it in them."""
        from ..data import open_dataset
        from ..data.reader import conversion_of

        data_dir = data or self.data_path()
        ds = open_dataset(data_dir)
        self.check_data(ds, data_dir)
        self.meta["inputs"] = conversion_of(ds["train"])
        self.meta.setdefault("class_names", list(ds.class_names))

    def inputs(self, x):
        """Inputs as stored in the dataset (a batch, or one sample) to the model's: as the training reader
        converts them (scaled, standardized with the training split's statistics)."""
        if "inputs" not in self.meta:
            raise UserError(f"{self.path} was written before distnet kept its input statistics in checkpoints: "
                            "load it with data=DIR (the prepared dataset it was trained on)")
        x = np.asarray(x)
        shape = self.input_shape
        if x.shape == shape:
            x = x[None]
        if x.shape[1:] != shape:
            raise UserError(f"inputs of shape {x.shape} do not fit {self.path}: it takes (N, "
                            f"{', '.join(map(str, shape))}) or one sample of shape {shape}")
        spec, dtype = self.meta["inputs"], self.model.dtype
        out = x.astype(dtype)
        if spec["pixel_scale"] != 1:
            out /= dtype.type(round(1 / spec["pixel_scale"]))
        bshape = (1, -1) + (1,) * (len(shape) - 1)
        out -= np.asarray(spec["mean"], dtype).reshape(bshape)
        out *= (1 / np.asarray(spec["std"], np.float64)).astype(dtype).reshape(bshape)
        return out

    def predict_proba(self, x, batch_size=1024):
        """Class probabilities (N, classes) for inputs X as stored in the dataset."""
        from .assess import class_scores

        x = self.inputs(x)
        return np.concatenate([class_scores(self.loss, self.model.forward(x[i:i + batch_size], training=False))
                               for i in range(0, len(x), batch_size)]) if len(x) else np.empty((0, 0))

    def predict(self, x, batch_size=1024):
        """Class indices (N,) for inputs X as stored in the dataset (``class_names`` names them)."""
        return np.argmax(self.predict_proba(x, batch_size), axis=1)


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
