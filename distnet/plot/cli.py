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


def check_args(args):
    """Every check of the command line before any work: one kind of figure, and where it goes (``args.out``
    set to the default when not given) can take a PNG."""
    from pathlib import Path

    from ..outputs import check_figure

    if args.boundary and args.runs:
        raise UserError("distnet plot takes either metrics files or --boundary CHECKPOINT, not both")
    if not args.boundary and not args.runs:
        raise UserError("distnet plot needs metrics files (RUN.jsonl ...) or --boundary CHECKPOINT")
    if args.out is None and args.runs:
        args.out = str(Path(args.runs[0]).with_suffix(".png"))
    elif args.out is None:  # beside the checkpoint: in its folder, or in the folder named
        where = Path(args.boundary)
        args.out = str((where if where.is_dir() else where.parent) / "boundary.png")
    check_figure(args.out)


def run(args):
    check_args(args)
    if args.boundary:
        from .boundary import main
    else:
        from .curves import main
    return main(args)
