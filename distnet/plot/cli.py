"""``distnet plot``: figures as PNG files.

  distnet plot RUN.jsonl [RUN.jsonl ...] --out curves.png     learning curves of runs (module ``curves``)
  distnet plot --boundary CHECKPOINT --data DIR --out b.png   decision regions of a 2-D classifier (``boundary``)
"""

from ..errors import UserError


def add_arguments(p):
    p.add_argument("runs", nargs="*", metavar="RUN.jsonl", help="metrics files written by distnet train --metrics")
    p.add_argument("--boundary", metavar="CHECKPOINT", help="plot the decision regions of this checkpoint")
    p.add_argument("--data", metavar="DIR", help="with --boundary: the 2-D dataset (default: the run's)")
    p.add_argument("--out", metavar="FILE.png",
                   help="where to write the figure (default: the first metrics file's name with .png; with "
                        "--boundary, boundary.png beside the checkpoint)")
    p.add_argument("--x", choices=["steps", "samples", "time"], default="steps",
                   help="learning curves against steps, training samples or running time (default steps)")


def run(args):
    if args.boundary and args.runs:
        raise UserError("distnet plot takes either metrics files or --boundary CHECKPOINT, not both")
    if args.boundary:
        from .boundary import main
    elif args.runs:
        from .curves import main
    else:
        raise UserError("distnet plot needs metrics files (RUN.jsonl ...) or --boundary CHECKPOINT")
    return main(args)
