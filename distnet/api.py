"""The Python API: train from a script and predict with a trained model (docs/guide/python.md).

    import distnet
    result = distnet.train("fashion-mlp", overrides={"train": {"epochs": 2}})   # or a dict, or a TOML path
    model = distnet.load("runs/ckpt")                                           # a checkpoint or its folder
    labels = model.predict(x)                                                   # x as stored in the dataset

``train`` runs on every rank of the MPI job it is started in (``mpiexec -n 2 python script.py``), exactly as
``distnet train``: the same config, the same metrics and checkpoints, the same results. A failure raises on
every rank where every rank can tell: a ``distnet.errors.UserError`` (bad config or data: the one line
``distnet train`` would print) or a ``distnet.comm.failures.Stop`` (``exit_code`` 3: stopped by a signal; 1:
a non-finite loss); else the job ends as ``distnet train`` would end it (one rank failing alone inside a
collective cannot raise on the others without leaving them waiting).
"""

from pathlib import Path

from . import config as C
from .errors import UserError


def resolve_config(config, overrides=None, sets=()):
    """A validated config from a preset name, a TOML file path or a dict of sections (over the defaults, or
    over the preset or file its ``extends`` names), then ``overrides`` (a dict of sections) and ``sets``
    (``"section.key=value"`` strings, as ``--set`` takes them)."""
    if isinstance(config, dict):
        config = dict(config)
        base = config.pop("extends", None)
        cfg = C.resolve(base) if base else C.defaults()  # validated once, below, with everything merged
        cfg = C.merge(cfg, config, "the config dict")
        label = "the config dict"
    elif isinstance(config, (str, Path)):
        cfg, label = C.resolve(str(config)), str(config)
    else:
        raise UserError(f"config must be a preset name, a TOML path or a dict of sections, got {type(config).__name__}")
    if overrides:
        cfg = C.merge(cfg, overrides, "overrides")
    for item in sets:
        cfg = C.merge(cfg, C.parse_set(item), f"--set {item}")
    C.validate(cfg, label)
    return cfg


def train(config, overrides=None, sets=(), observers=()):
    """Train as ``distnet train`` would with this config (see ``resolve_config``); ``observers`` run after the
    standard ones (``distnet.training.observers.Observer`` subclasses). Returns a ``Result``: ``summary`` (the
    metrics' summary line), ``timings`` (with ``log.profile``) and ``run`` (its ``model``, ...)."""
    from . import blas, comm
    from .comm.failures import Stop, fail_alone
    from .training.loop import train as _train

    w = comm.world()
    cfg = resolve_config(config, overrides, sets)  # every rank resolves the same: all fail alike
    threads = blas.configure(w)
    try:
        return _train(cfg, blas_threads=threads, observers=observers)
    except Stop as e:  # decided by every rank together, so raised on each: a user error as one
        if e.exit_code == UserError.exit_code and e.detail:
            raise UserError(e.detail) from None
        raise  # a signal (exit_code 3), a non-finite loss (1): distnet.comm.failures.Stop with its exit_code
    except Exception as e:
        if w.size == 1:
            raise
        fail_alone(w, e)  # the others may be inside a collective: end the job, as distnet train does
        raise


def load(checkpoint, data=None):
    """The trained model in CHECKPOINT (a file, or a folder: its newest valid checkpoint), ready to
    ``predict`` and ``predict_proba`` on a NumPy batch of inputs as stored in its dataset. ``data`` (a
    prepared dataset folder) is needed only for checkpoints written before distnet kept the input
    statistics in them."""
    from .evaluate.trained import load_trained

    trained = load_trained(checkpoint)
    if data is not None or "inputs" not in trained.meta:
        trained.take_inputs_from(data)
    return trained
