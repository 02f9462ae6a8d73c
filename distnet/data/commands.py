"""``distnet data``: prepare, import, inspect and list datasets."""

import argparse
import json

from . import catalog
from .prepare import prepare
from .report import render, summary


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("prepare", help="convert a dataset into HDF5 shards",
                       description="Convert IDX files (local, Debian package or download) or generate a "
                                   "synthetic set into DIR/{train,test}/part-*.h5, atomically.")
    p.add_argument("name", help="dataset name (see `distnet data list`)")
    p.add_argument("--out", required=True, help="output folder, e.g. data/fashion-mnist")
    p.add_argument("--source", help="folder holding the IDX files (skips any download)")
    p.add_argument("--shards", type=int, default=1, help="files per split (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic sets (default 0)")
    p.add_argument("--num-train", type=int, help="training samples (synthetic; for IDX sets: the first N)")
    p.add_argument("--num-test", type=int, help="test samples (synthetic; for IDX sets: the first N)")
    p.add_argument("--classes", type=int, help="number of blobs of the gaussians set (default 4)")
    p.add_argument("--compress", action="store_true", help="store x gzip-compressed in chunks")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--cache", help="download folder (default $DISTNET_CACHE/NAME or ~/.cache/distnet/NAME)")
    p.add_argument("--mirror", help="download from this base URL instead of the catalog's")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept downloaded files whose SHA-256 the catalog does not know")
    p.set_defaults(_action=run_prepare)
    add_import(sub)
    p = sub.add_parser("inspect", help="show a prepared dataset and verify its checksums")
    p.add_argument("path", help="prepared dataset folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    p.set_defaults(_action=run_inspect)
    p = sub.add_parser("list", help="the dataset catalog")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(_action=run_list)


def add_import(sub):
    p = sub.add_parser(
        "import", help="convert your own arrays, CSV or images into a prepared dataset",
        description="Convert SRC into DIR/{train,test}/part-*.h5 (the format `prepare` writes), atomically, "
                    "never holding SRC whole. SRC: a .npz (x_train, y_train, x_test, y_test; or x, y with "
                    "--test-fraction), an x.npy with --labels y.npy (or a folder holding x.npy and y.npy), an "
                    "HDF5 file (the same names, or --x KEY --y KEY), a CSV of numbers with a label column, or a "
                    "folder of images DIR/<class>/*.png|jpg (or DIR/train/<class>/ and DIR/test/<class>/).")
    p.add_argument("src", metavar="SRC", help="the file or folder to import")
    p.add_argument("--out", required=True, help="output folder, e.g. data/mine")
    p.add_argument("--format", help="npz, npy, hdf5, csv or images (default: from SRC's name)")
    p.add_argument("--labels", metavar="Y.npy", help="the labels of an x .npy file (one per row)")
    p.add_argument("--x", metavar="KEY", help="the array (npz) or dataset (HDF5) of samples")
    p.add_argument("--y", metavar="KEY", help="the array (npz) or dataset (HDF5) of labels")
    p.add_argument("--label-column", metavar="NAME|INDEX", help="CSV: the label column, by header name or "
                   "index from 0 (default: the last)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="CSV: the first line names the columns (default: detected)")
    p.add_argument("--delimiter", help="CSV: the field delimiter (default: detected among , ; tab)")
    p.add_argument("--size", metavar="HxW", help="images: resize every image to H x W pixels")
    p.add_argument("--color", choices=("auto", "gray", "rgb"), default="auto",
                   help="images: 1 or 3 channels (default auto: gray when every image is)")
    p.add_argument("--classes", metavar="A,B,...", help="class names, in label order (images: the class "
                   "folders to take, in this order; default: the folder names, or the labels' names sorted)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="hold out this fraction of every class as the test split (a source with one set)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --test-fraction split (default 0)")
    p.add_argument("--name", help="the dataset's name (default: SRC's name)")
    p.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="stored x type (default auto: uint8, float32 and float64 kept, others float32)")
    p.add_argument("--channels-last", action="store_true", help="4-D x is (N, H, W, C): store it as NCHW")
    p.add_argument("--shards", type=int, default=1, help="files per split (default 1)")
    p.add_argument("--compress", action="store_true", help="store x gzip-compressed in chunks")
    p.add_argument("--force", action="store_true", help="replace an existing prepared dataset in --out")
    p.set_defaults(_action=run_import)


def run_import(args):
    """A stop signal (distnet/signals.py) is a KeyboardInterrupt here: the import removes what it wrote."""
    from .imports import import_data

    options = {k: getattr(args, k) for k in ("format", "labels", "x", "y", "label_column", "header",
                                             "delimiter", "size", "color", "classes", "test_fraction", "seed",
                                             "name", "dtype", "channels_last", "shards", "compress", "force")}
    out = import_data(args.src, args.out, **options)
    info = summary(out, verify=False)
    info["checksums"] = "written"
    print(render(info))
    return 0


def run(args):
    check_args(args)
    return args._action(args)


def check_args(args):
    """The counts of ``data prepare`` before any work (the shards against the split's size come later)."""
    from ..config import SEED_MAX
    from ..errors import UserError

    if args.action != "prepare":
        return
    for flag, value, low in (("--shards", args.shards, 1), ("--num-train", args.num_train, 1),
                             ("--num-test", args.num_test, 1), ("--classes", args.classes, 2)):
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: give at least {low}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed {args.seed}: give a seed in [0, {SEED_MAX}]")


def run_prepare(args):
    options = {k: getattr(args, k) for k in ("source", "shards", "seed", "num_train", "num_test", "compress",
                                             "force", "mirror", "cache", "allow_unverified", "classes")}
    out = prepare(args.name, args.out, **options)
    info = summary(out, verify=False)
    info["checksums"] = "written"  # just computed from the data written: reading them back would say nothing new
    print(render(info))
    return 0


def run_inspect(args):
    info = summary(args.path, verify=not args.no_verify)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def run_list(args):
    manifests = [catalog.get(n) for n in catalog.names()]
    if args.json:
        print(json.dumps(manifests, indent=2))
        return 0
    print(f"{'name':<14} {'kind':<10} {'train':>7} {'test':>7} {'input':<12} {'classes':>7}  licence")
    for m in manifests:
        print(f"{m['name']:<14} {m['kind']:<10} {m['num_train']:>7} {m['num_test']:>7} "
              f"{str(tuple(m['input_shape'])):<12} {len(m['class_names']):>7}  {m['licence']}")
    print(f"\nmanifests: {catalog.CATALOG_DIR}")
    return 0
