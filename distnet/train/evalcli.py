"""``distnet eval CHECKPOINT --data DIR``: loss and accuracy of a checkpoint (also under mpiexec)."""

import json
import sys

from .. import build
from .. import checkpoint as ckpt
from .. import comm
from .. import config as C
from ..errors import UserError


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint written by distnet train, or its folder (the newest checkpoint in it)")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (default: the training config's)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass on each rank (256)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load_checkpoint(args):
    """Model, loss and split for the checkpoint (no collectives: any rank may fail here)."""
    from pathlib import Path

    from ..data import open_dataset

    if Path(args.checkpoint).is_dir():
        newest, args.skipped = ckpt.latest_valid(args.checkpoint)
        if newest is None:
            what = "only damaged checkpoints" if args.skipped else "no ckpt-*.h5"
            raise UserError(f"checkpoint folder {args.checkpoint} holds {what}: pass a folder that "
                            "distnet train --checkpoint-dir wrote, or a checkpoint file")
        args.checkpoint = str(newest)
    meta = ckpt.read_meta(args.checkpoint)
    if "config" not in meta:
        raise UserError(f"{args.checkpoint} holds no training config: evaluate a checkpoint from distnet train")
    cfg = C.merge(C.defaults(), C.parse_toml(meta["config"], args.checkpoint), args.checkpoint)
    data_dir = args.data or C.data_path(cfg)
    ds = open_dataset(data_dir)
    if args.split not in ds.splits:
        raise UserError(f"{data_dir} has no split {args.split!r}: choose one of {', '.join(ds.splits)}")
    if tuple(ds.input_shape) != tuple(meta.get("input_shape", ds.input_shape)):
        raise UserError(f"{data_dir} has inputs of shape {tuple(ds.input_shape)} but {args.checkpoint} was "
                        f"trained on {tuple(meta['input_shape'])}: pass the dataset it was trained on")
    model = build.model(cfg, ds.input_shape)
    model.load(args.checkpoint)
    return model, build.loss(cfg), ds[args.split]


def run(args):
    from .evaluate import evaluate

    w = comm.world()
    out = {}

    def body():
        with comm.agreed(w):  # any rank may fail to load alone
            model, loss_fn, split = load_checkpoint(args)
        for bad, reason in getattr(args, "skipped", []) if w.rank == 0 else []:
            print(ckpt.skipped_line(bad, reason, args.checkpoint), file=sys.stderr, flush=True)
        out["loss"], out["accuracy"], out["samples"] = evaluate(w, model, loss_fn, split, batch_size=args.batch_size)

    code = comm.run_on_every_rank(w, body)
    if code or w.rank != 0:
        return code
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, **out}))
    else:
        print(f"{args.checkpoint}: {args.split} loss {out['loss']:.4f} accuracy {out['accuracy']:.4f} "
              f"({out['samples']} samples)")
    sys.stdout.flush()
    return 0
