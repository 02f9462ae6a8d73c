"""``distnet sweep CONFIG_OR_PRESET --batch-sizes 32,64,...,8192 --target accuracy=0.88 --out DIR``.

Runs every point ([rank count x] batch size x learning-rate multiplier x seed) as its own ``distnet train``
on its rank count (``--ranks 1,2,4``: each pair that divides) and writes ``DIR/results.csv``, ``DIR/report.md``
and the figures. Run it again after an interruption: finished points are kept and an interrupted one resumes
from its checkpoint; run it with more batch sizes, --lr-grid multipliers or --repeats (the rest the same)
and the sweep grows: the new points are added and run, the old ones kept. ``--slurm-array`` writes a job-array
script instead of running; ``--report DIR`` collects what has run.
"""

import signal
import sys
import time
from pathlib import Path

from .. import config as C
from ..comm.world import launched
from ..errors import UserError
from ..training.observers.signals import EXIT_STOPPED
from . import launch
from . import plan as P


def add_arguments(p):
    p.add_argument("config", nargs="?", metavar="CONFIG_OR_PRESET",
                   help=f"a TOML config file or a preset: {', '.join(C.preset_names())}")
    p.add_argument("--batch-sizes", metavar="B,B,...",
                   help="global batch sizes, e.g. 64,256,1024, or a doubling run 32,64,...,8192; to grow a "
                        "sweep, run it again with more sizes (or more --lr-grid multipliers or --repeats) and "
                        "the same other options: its points are kept and only the new ones run")
    p.add_argument("--target", metavar="METRIC=VALUE", help="accuracy=0.88 or loss=0.3: what a point must reach")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="where the target is measured (default val: 10%% of train is held out if the config "
                        "holds out nothing)")
    p.add_argument("--out", metavar="DIR", help="the sweep's folder (points, results.csv, report.md, figures)")
    p.add_argument("--ranks", default="1", metavar="P[,P,...]",
                   help="ranks per run (default 1), or rank counts such as 1,2,4: every point at each, and the "
                        "report adds samples/s, strong and weak scaling efficiency and time to target per count")
    p.add_argument("--lr-rule", choices=P.RULES, default="sqrt",
                   help="learning rate across batch sizes, from the config's lr at its batch size (default sqrt)")
    p.add_argument("--lr-grid", default="1", metavar="M,M,...",
                   help="multipliers of the rule's rate tried at every batch size, e.g. 0.5,1,2 (default 1)")
    p.add_argument("--epochs", type=int, metavar="N", help="cap per point (default: the config's train.epochs)")
    p.add_argument("--repeats", type=int, default=1, metavar="K", help="seeds per point: train.seed + 0..K-1")
    p.add_argument("--resolution", type=float, default=0.03, metavar="FRACTION",
                   help="evaluate as the step count grows by this fraction (default 0.03: steps to target "
                        "known within 3%%)")
    p.add_argument("--auto", action="store_true",
                   help="also run train.batch_size = auto (grown toward the measured noise scale from the smallest "
                        "batch size to the largest) at every rate and seed, and compare it with the fixed batches")
    p.add_argument("--full-curves", action="store_true",
                   help="train every point to the cap instead of stopping it at the target")
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (data.path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key for every point, as in distnet train")
    p.add_argument("--launcher-prefix", default="", metavar="CMD",
                   help="put before each point's launcher, e.g. 'flock -x /tmp/distnet-cpu.lock' (one point at a "
                        "time holds the lock, not the whole sweep)")
    p.add_argument("--slurm-array", action="store_true",
                   help="write DIR/sweep.sbatch (one array task per point) instead of running")
    p.add_argument("--report", metavar="DIR", help="only collect the points of the sweep in DIR and write its report")
    p.add_argument("--run-point", nargs=2, metavar=("DIR", "INDEX"),
                   help="run one point of the sweep in DIR (what each task of --slurm-array runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the points")


def check_args(args):
    """Every check of the command line before any work; the user's validated config (None with --report or
    --run-point, which read the sweep folder's)."""
    from ..outputs import check_figures
    from .figures import FIGURES

    if args.report:
        _only(args, "--report")
        check_figures(args.report, FIGURES.values(), "--report")
        return None
    if args.run_point:
        _only(args, "--run-point")
        return None
    if not args.config or not args.batch_sizes or not args.out:
        raise UserError("distnet sweep needs CONFIG_OR_PRESET, --batch-sizes and --out (or --report DIR)")
    P.check_args(args)
    flags = [(f"--data {args.data}", {"data": {"path": args.data}})] if args.data else []
    base = C.load(args.config, args.set, flags)
    check_figures(args.out, FIGURES.values(), "--out")
    return base


def run(args):
    base = check_args(args)
    if args.report:
        return _report(P.load(args.report), args.report)
    if args.run_point:
        return _run_point(*args.run_point, prefix=args.launcher_prefix)
    started = launched()
    if started:  # every process would run the whole sweep: one says so, all exit 2
        var, n, rank = started
        if rank:
            return 2
        raise UserError(f"distnet sweep starts each point's ranks itself (--ranks P): run it as one process, "
                        f"not under mpiexec or srun (it was started as one of {n}, {var}={n})")
    plan, folder = _plan(args, base)
    if args.slurm_array:
        path = launch.slurm_array(plan, folder, args.launcher_prefix)
        print(f"distnet sweep: {len(plan.points)} points; submit with: sbatch {path}\n"
              f"  then collect with: distnet sweep --report {folder}")
        return 0
    return _sweep(plan, folder, args)


def _only(args, option):
    if args.config or args.batch_sizes or args.out:
        raise UserError(f"{option} reads the settings from the sweep folder: give no config, --batch-sizes or --out")


def _plan(args, base):
    """The plan and the sweep's config, derived from the user's validated config ``base`` with what the sweep
    sets (validated once; ``base`` is not changed), written to the --out folder."""
    data = Path(C.data_path(base))
    if not data.exists():
        raise UserError(f"dataset folder {data} does not exist: run 'distnet data prepare "
                        f"{base['data']['dataset'] or 'NAME'} --out {data}' or pass --data DIR")
    plan, over = P.make(args, base)
    for note in plan.notes:
        if note.startswith("left out "):  # the user asked for these pairs: say so now, not only in the report
            print(f"distnet sweep: {note}", file=sys.stderr)
    over.setdefault("data", {})["path"] = str(data.resolve())  # the points run inside the sweep folder
    over["log"] = dict(metrics="", trace="")  # each point names its own
    over["checkpoint"] = dict(dir="", resume=False)
    cfg = C.derive(base, over, "distnet sweep")
    folder = Path(args.out)
    plan = P.save(folder, plan, cfg)  # a sweep grown by more points: the old ones first, as they were
    return plan, folder


class _Terminated(Exception):
    """SIGTERM (a batch system's stop, scancel, a time limit) as an exception, like Ctrl-C's KeyboardInterrupt."""


def _on_term(signum, frame):
    raise _Terminated()


def _by(e):
    """How the sweep was stopped, as its line says it: SIGTERM, Ctrl-C (SIGINT), or SIGUSR1 (Slurm's --signal,
    raised as ``distnet.signals.Interrupted``)."""
    from ..signals import name_of

    if isinstance(e, _Terminated):
        return "SIGTERM"
    return "Ctrl-C" if name_of(e) == "SIGINT" else name_of(e)


def _stopped(by, what):
    """The line and exit code of a sweep (or one of its points) stopped by a signal: 3, as a training run
    stopped by a signal (docs/guide/checkpoints.md): not finished, and resumed by running the same command again."""
    print(f"distnet sweep: interrupted ({by}); run the same command again to continue ({what})", file=sys.stderr)
    return EXIT_STOPPED


def _sweep(plan, folder, args):
    from tqdm import tqdm

    from . import report

    signal.signal(signal.SIGTERM, _on_term)  # a batch system's stop: end the running point, keep its checkpoint
    states = [launch.state(folder, p) for p in plan.points]
    print(f"distnet sweep: {len(plan.points)} points in {folder} ({states.count('done')} done, "
          f"{states.count('partial')} to resume)", file=sys.stderr, flush=True)
    # a batch job's log (not a terminal) or --no-progress: a plain line per point instead of the bar
    plain = args.no_progress or not sys.stderr.isatty()
    bar = tqdm(total=len(plan.points), initial=states.count("done"), unit="point", file=sys.stderr, disable=plain,
               dynamic_ncols=True)
    try:
        failed = _run_points(plan, folder, args, states, bar, plain)
    except (KeyboardInterrupt, _Terminated) as e:
        bar.close()
        report.write(plan, folder, figures=False)
        return _stopped(_by(e),
                        "finished points are kept, the interrupted one resumes from its checkpoint")
    finally:
        bar.close()
    report.write(plan, folder)
    print(f"distnet sweep: wrote {folder / 'results.csv'} and {folder / 'report.md'}", file=sys.stderr)
    if failed:
        print(f"distnet sweep: {len(failed)} point(s) failed: {', '.join(p.name for p in failed)}; run the same "
              "command again to retry them", file=sys.stderr)
        return 1
    return 0


def _run_points(plan, folder, args, states, bar, plain):
    """Run every point not done yet, in order, saying how each ended; returns the points that failed."""
    from . import report

    failed, finished = [], states.count("done")
    for p, st in zip(plan.points, states):
        if st == "done":
            continue
        bar.set_postfix_str(f"{p.name}" + (" (resuming)" if st == "partial" else ""), refresh=True)
        started = time.monotonic()
        code = launch.run_point(plan, p, folder, args.launcher_prefix)
        if code == 2:
            raise UserError(f"point {p.name} stopped with a user error:\n{launch.last_error(folder, p)}\n"
                            f"  (its log: {folder / p.name / 'log.txt'})")
        bar.update(1)
        rows = report.write(plan, folder, figures=False)  # results.csv grows as points finish
        finished += 1
        line = point_line(next(r for r in rows if r["point"] == p.name), code, time.monotonic() - started,
                          f"{finished}/{len(plan.points)}")
        if code != 0:
            failed.append(p)
            bar.write(f"{line}; its log {folder / p.name / 'log.txt'} ends:\n{launch.last_error(folder, p)}",
                      file=sys.stderr)
        elif plain:
            print(line, file=sys.stderr, flush=True)
    return failed


def point_line(row, code, seconds, count):
    """The line said when a point ends: its name, how it ended (steps to the target, or "not reached" and
    the steps it ran), and the time it took here; e.g. ``distnet sweep: point 3/8 b00256-lr1-s0: reached in
    42 steps, 12 s``."""
    if code != 0:
        how = f"failed (exit {code})"
    elif row["status"] == "reached":
        how = f"reached in {row['steps_to_target']} steps"
    elif row["status"] == "not reached":
        how = f"not reached in {row['steps_run']} steps"
    else:
        how = f"{row['status']} (no summary line in its metrics)"
    return f"distnet sweep: point {count} {row['point']}: {how}, {seconds:.0f} s"


def _run_point(folder, index, prefix=""):
    plan = P.load(folder)
    try:
        point = plan.points[int(index)]
    except (ValueError, IndexError):
        raise UserError(f"--run-point {folder} {index}: the sweep has points 0..{len(plan.points) - 1}") from None
    if launch.state(folder, point) == "done":
        print(f"distnet sweep: point {point.name} is done", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, _on_term)
    try:
        code = launch.run_point(plan, point, folder, prefix)
    except (KeyboardInterrupt, _Terminated) as e:
        return _stopped(_by(e), f"point {point.name} resumes from its checkpoint")
    if code:
        print(f"distnet sweep: point {point.name} failed (exit {code}):\n{launch.last_error(folder, point)}",
              file=sys.stderr)
    return code


def _report(plan, folder):
    from . import report

    rows = report.write(plan, folder)
    done = sum(r["status"] in ("reached", "not reached") for r in rows)
    print(f"distnet sweep: {done} of {len(rows)} points done; wrote {Path(folder) / 'results.csv'} and "
          f"{Path(folder) / 'report.md'}", file=sys.stderr)
    return 0
