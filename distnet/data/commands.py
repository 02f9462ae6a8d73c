"""``distnet data``: prepare, inspect and list datasets."""

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
    p = sub.add_parser("inspect", help="show a prepared dataset and verify its checksums")
    p.add_argument("path", help="prepared dataset folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    p.set_defaults(_action=run_inspect)
    p = sub.add_parser("list", help="the dataset catalog")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(_action=run_list)


def run(args):
    return args._action(args)


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
