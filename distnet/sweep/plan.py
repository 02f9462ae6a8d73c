"""The plan of a sweep: its settings and points, kept in ``DIR/sweep.json`` beside ``DIR/config.toml``.

Every point runs with the sweep folder as its working directory and names its files relative to it, so a
sweep folder can be moved (or reached from a cluster's compute nodes under another path) as a whole.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import config as C
from ..errors import UserError
from ..nn.schedules import LR_SCALING

RULES = tuple(LR_SCALING)  # optimizer.lr_scaling's rules
# 2: several rank counts (``ranks`` a list, each point its own). A sweep of one rank count is still written
# in version 1's form, byte for byte, so that its folder resumes with this distnet and older ones alike.
PLAN_VERSION = 2


def parse_run(text, option, what="global batch sizes", example="32,64,128", run="32,64,...,8192"):
    """``"32,64,128"`` or ``"32,64,...,8192"`` (a geometric run: the ratio of the first two, up to the last) as
    sorted distinct positive integers; ``option`` and ``what`` name them in the one-line error."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        if "..." in items:
            i = items.index("...")
            if i != 2 or len(items) != 4:
                raise ValueError
            a, b, last = int(items[0]), int(items[1]), int(items[3])
            if a < 1 or b <= a or b % a or last < b:
                raise ValueError
            values = [a]
            while values[-1] * (b // a) <= last:
                values.append(values[-1] * (b // a))
        else:
            values = [int(t) for t in items]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected {what} such as {example} or a doubling run such as "
                        f"{run}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise UserError(f"{option} {text!r}: give distinct positive {what.split()[-1]}")
    return sorted(values)


def parse_batch_sizes(text):
    """``--batch-sizes``: a list or a doubling run of global batch sizes."""
    return parse_run(text, "--batch-sizes")


def parse_ranks(text):
    """``"1,2,4"`` or ``"2"`` (an int from code works too): sorted distinct rank counts."""
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or len(set(counts)) != len(counts):
        raise UserError(f"--ranks {text!r}: expected a rank count or distinct counts separated by commas, e.g. 1,2,4")
    if min(counts) < 1:
        raise UserError(f"--ranks {min(counts)}: give at least 1")
    return sorted(counts)


def parse_floats(text, option):
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values) or len(set(values)) != len(values):
        raise UserError(f"{option} {text!r}: expected distinct positive numbers separated by commas, e.g. 0.5,1,2")
    return values


def scaled_lr(lr, base_batch, batch, rule):
    """The learning rate for ``batch`` from ``lr`` at ``base_batch`` by ``rule`` (none, linear, sqrt)."""
    ratio = batch / base_batch
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@dataclass
class Point:
    index: int
    name: str  # its folder inside the sweep
    batch: int
    lr_mult: float
    lr: float
    seed: int
    args: list = field(default_factory=list)  # distnet train arguments, relative to the sweep folder
    auto: bool = False  # train.batch_size = "auto": from ``batch`` (the smallest size) up to the largest
    ranks: int = 0  # the processes it runs on; 0: the plan's (a sweep.json of one rank count leaves it out)


@dataclass
class Plan:
    config: str  # what the user named (a preset or a file); the resolved config is DIR/config.toml
    ranks: list  # the rank counts, ascending (in sweep.json an int when there is one, as in version 1)
    lr_rule: str
    base_batch: int
    base_lr: float
    target: str  # "accuracy=0.88"
    split: str  # val | test
    epochs: int  # the cap
    resolution: float  # train.eval_growth of every point
    full_curves: bool  # False: a point stops at the target
    points: list
    notes: list = field(default_factory=list)  # what the sweep changed in the config or left out, in the report
    version: int = PLAN_VERSION

    def __post_init__(self):
        """``ranks`` may come as one int (version 1's sweep.json, code that builds a plan of one count); a point
        without its own count (0) runs on the plan's."""
        self.ranks = [self.ranks] if isinstance(self.ranks, int) else sorted(self.ranks)
        for p in self.points:
            p.ranks = p.ranks or self.ranks[0]

    def to_json(self):
        """Version 1's text when there is one rank count (``ranks`` an int, the points without theirs)."""
        d = asdict(self)
        if len(self.ranks) == 1:
            d.update(ranks=self.ranks[0], version=1)
            for p in d["points"]:
                del p["ranks"]
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        d["points"] = [Point(**p) for p in d["points"]]
        return cls(**d)

    @property
    def several(self):
        """More than one rank count: the points' names and the report say which each ran on."""
        return len(self.ranks) > 1


def point_name(batch, mult, seed, auto=False, ranks=None):
    """``b00256-lr1-s0``; ``p2-b00256-lr1-s0`` when the sweep has several rank counts (``ranks`` given)."""
    name = f"bauto-lr{mult:g}-s{seed}" if auto else f"b{batch:05d}-lr{mult:g}-s{seed}"
    return name if ranks is None else f"p{ranks}-{name}"


def fitting_sizes(sizes, counts, accumulate):
    """{rank count: the batch sizes it divides (with ``accumulate`` micro-steps)} and the notes on the pairs
    left out. One rank count: a size it does not divide is an error (the user asked for that point); several:
    only that pair is left out, an error when nothing is left."""
    fits = {p: [b for b in sizes if b % (p * accumulate) == 0] for p in counts}
    if len(counts) == 1 and fits[counts[0]] != sizes:
        bad, group = sorted(set(sizes) - set(fits[counts[0]])), counts[0] * accumulate
        raise UserError(f"--batch-sizes: {', '.join(map(str, bad))} not divisible by ranks x accumulation steps = "
                        f"{counts[0]} x {accumulate}: use multiples of {group}")
    if not any(fits.values()):
        raise UserError(f"--batch-sizes: none is divisible by ranks x accumulation steps for any of --ranks "
                        f"{','.join(map(str, counts))} (accumulation {accumulate}): use multiples of "
                        f"{counts[0] * accumulate}")
    notes = [f"left out batch {', '.join(str(b) for b in sizes if b not in fits[p])} on {p} rank{'s' * (p > 1)} (not "
             f"divisible by ranks x accumulation steps = {p} x {accumulate})" for p in counts if fits[p] != sizes]
    return fits, notes


def check_args(args):
    """The sweep's own options, checked before any work: (target, rank counts, batch sizes, lr multipliers)."""
    target = C.parse_target(args.target, "--target")
    if target is None:
        raise UserError("distnet sweep needs --target METRIC=VALUE, e.g. --target accuracy=0.88")
    counts = parse_ranks(args.ranks)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: give at least 1")
    if not 0 < args.resolution < 1:
        raise UserError(f"--resolution {args.resolution}: give a fraction such as 0.03 (3 %)")
    sizes = parse_batch_sizes(args.batch_sizes)
    mults = parse_floats(args.lr_grid, "--lr-grid")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: give at least 1")
    return target, counts, sizes, mults


def make(args, base):
    """(plan, overrides) for the command line ``args`` and the user's validated config ``base``: the plan, and
    what the sweep changes in the config (the validation split the target needs, no lr scaling of its own)
    as a nested dict for ``config.derive``; ``base`` itself is not changed."""
    tc, oc, notes, over = base["train"], base["optimizer"], [], {}
    target, counts, sizes, mults = check_args(args)
    val_fraction = base["data"]["val_fraction"]
    if args.split == "val" and not val_fraction:
        val_fraction = 0.1
        over["data"] = {"val_fraction": val_fraction}
        notes.append("data.val_fraction = 0.1 (the config held out no validation split for the target)")
    if val_fraction and args.split == "test":
        notes.append("the target is measured on the test split although a validation split is held out")
    epochs = args.epochs or tc["epochs"]
    fits, left_out = fitting_sizes(sizes, counts, tc["accumulate"])
    # The config's own lr scaling would scale again: the sweep states each point's rate itself.
    # a config with batch_size = "auto" starts at batch_min: the rate it gives is the rate at that batch
    base_batch = tc["batch_size"] if isinstance(tc["batch_size"], int) else tc["batch_min"]
    base_lr = oc["lr"]
    if oc["lr_scaling"] != "none":
        base_batch = oc["base_batch"]
        notes.append(f"optimizer.lr_scaling = none (the sweep scales the rate by --lr-rule {args.lr_rule} "
                     f"from lr {base_lr:g} at batch {base_batch})")
        over["optimizer"] = {"lr_scaling": "none"}
    points = []
    for ranks in counts:  # rank counts outermost: a Slurm array's tasks of one count are one index range
        ok = fits[ranks]
        for b in ok + (["auto"] if args.auto and ok else []):
            auto = b == "auto"
            b = ok[0] if auto else b
            for m in mults:
                for r in range(args.repeats):
                    seed = tc["seed"] + r
                    lr = scaled_lr(base_lr, base_batch, b, args.lr_rule) * m
                    name = point_name(b, m, seed, auto, ranks if len(counts) > 1 else None)
                    points.append(Point(len(points), name, b, m, lr, seed, auto=auto, ranks=ranks))
    plan = Plan(config=args.config, ranks=[p for p in counts if fits[p]], lr_rule=args.lr_rule,
                base_batch=base_batch, base_lr=base_lr, target=f"{target[0]}={target[1]:g}", split=args.split,
                epochs=epochs, resolution=args.resolution, full_curves=args.full_curves, points=points,
                notes=notes + left_out)
    train_size = _train_size(base, val_fraction)
    for p in points:
        p.args = point_args(plan, p, train_size, fits[p.ranks][-1])
    return plan, over


def _train_size(cfg, val_fraction):
    """Samples in the training split after the validation hold-out (for the evaluation cadence)."""
    from ..data import open_dataset

    try:
        n = len(open_dataset(C.data_path(cfg))["train"])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken dataset is the user's to fix
        raise UserError(f"{C.data_path(cfg)}: cannot open the dataset ({e}): prepare it with distnet data "
                        "prepare") from None
    return n - int(round(n * val_fraction))


def point_args(plan, p, train_size, largest):
    """``distnet train`` arguments of point ``p``. Evaluations (and train lines) come every ``resolution``
    of an epoch at first and then as the step count grows by ``resolution``: the step at which the target is
    met is known to within that fraction wherever it takes an epoch or more. An "auto" point starts at the
    smallest batch size with its rate and grows up to the largest, its rate following the sweep's rule."""
    steps_per_epoch = max(1, train_size // p.batch)
    gap = max(1, int(plan.resolution * steps_per_epoch))
    batch = ["auto", "--set", f"train.batch_min={p.batch}", "--set", f"train.batch_max={largest}",
             "--set", f'optimizer.lr_scaling="{plan.lr_rule}"', "--set", f"optimizer.base_batch={p.batch}"] \
        if p.auto else [str(p.batch)]
    args = ["train", "config.toml", "--batch-size", *batch, "--lr", repr(p.lr), "--seed", str(p.seed),
            "--epochs", str(plan.epochs), "--metrics", f"{p.name}/metrics.jsonl",
            "--checkpoint-dir", f"{p.name}/ckpt", "--progress", "lines",
            "--set", f"train.eval_growth={plan.resolution!r}", "--set", f"train.eval_every={gap}",
            "--set", f"train.log_every={gap}", "--set", "checkpoint.keep=1"]
    if not plan.full_curves:
        args += ["--set", f'train.target="{plan.target}"']
    return args


def save(folder, plan, cfg):
    """Write ``config.toml`` and ``sweep.json``; returns the plan to run. A folder holding this sweep continues
    it; one holding it with fewer points (more --batch-sizes, --lr-grid multipliers or --repeats asked now)
    grows into it (``_grown``); one holding another sweep is a user error (its points would be mixed into
    this one's report)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text, js = C.to_toml(cfg), plan.to_json()
    old_cfg, old_plan = folder / "config.toml", folder / "sweep.json"
    if old_plan.exists():
        old_js, old_text = old_plan.read_text(), old_cfg.read_text() if old_cfg.exists() else ""
        if (old_js, old_text) == (js, text):
            return plan
        grown, differs = _grown(old_js, plan) if old_text == text else (None, None)
        if grown is None:
            differs = differs or _difference(old_js, js, old_text, text)
            raise UserError(f"{folder} holds a sweep with other settings ({differs}): rerun it with the same "
                            "options and config to continue it (or with more batch sizes, multipliers or "
                            "repeats to grow it), or give another --out")
        _write(old_plan, grown.to_json())
        return grown
    _write(old_cfg, text)
    _write(old_plan, js)
    return plan


def _grown(old_js, plan):
    """(the sweep in ``old_js`` with the points of ``plan`` it lacks appended, None) when ``plan`` only adds
    points: its other settings are the same and it holds every old point unchanged (by name). The old points
    keep their indices (a Slurm array task's number, the order of results.csv) and folders, so what has run
    is kept. (None, why) when an old point changed (an auto point's largest batch, say); (None, None) when
    the settings differ or an old point is left out, which the caller words as any other difference."""
    try:
        old, new = json.loads(old_js), json.loads(plan.to_json())
    except ValueError:
        return None, None
    if _settings(old) != _settings(new):
        return None, None
    asked = {p["name"]: p for p in new["points"]}
    if not all(p.get("name") in asked for p in old["points"]):
        return None, None
    for p in old["points"]:
        found = first_difference({**p, "index": 0}, {**asked[p["name"]], "index": 0})
        if found:
            key, was, now = found
            return None, f"sweep.json point {p['name']} {key} is {was} there, {now} here"
    have = {p["name"] for p in old["points"]}
    added = [q for q in new["points"] if q["name"] not in have]
    added = [{**q, "index": len(old["points"]) + i} for i, q in enumerate(added)]
    return Plan.from_json(json.dumps({**new, "points": old["points"] + added})), None


def _settings(d):
    """A sweep.json's settings that a grown sweep keeps: all but its points and the notes on them (the pairs
    of rank count and batch size left out, which more batch sizes change)."""
    return {k: v for k, v in d.items() if k not in ("points", "notes")}


def _difference(old_js, js, old_text, text):
    """Where the sweep in a folder and the one asked for differ, in words: the first differing setting of
    sweep.json (the options), else of config.toml, with both values, so the user knows what to change back."""
    if old_js != js:
        return _described("sweep.json", old_js, js, json.loads)
    return _described("config.toml", old_text, text, lambda t: C.parse_toml(t, "config.toml"))


def _described(name, old, new, parse):
    try:
        found = first_difference(parse(old), parse(new))
    except (ValueError, UserError):  # a file this distnet cannot read
        return f"its {name} cannot be read"
    if found is None:
        return f"its {name} is written differently"
    key, was, now = found
    return f"{name} {key} is {was} there, {now} here"


MISSING = object()


def first_difference(old, new, path=""):
    """(key path such as ``points[1].batch``, old value, new value) of the first place in document order
    where two JSON-like values differ, the values as JSON; None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = first_difference(old.get(key, MISSING), new.get(key, MISSING), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            found = first_difference(old[i] if i < len(old) else MISSING, new[i] if i < len(new) else MISSING,
                                     f"{path}[{i}]")
            if found:
                return found
        return None
    if old == new and type(old) is type(new):
        return None
    return path, _shown(old), _shown(new)


def _shown(value, width=60):
    """A value as JSON, cut short: a whole point or list would not fit the one-line message."""
    text = "absent" if value is MISSING else json.dumps(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _write(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load(folder):
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep folder (no sweep.json): give the --out folder of a distnet sweep")
    try:
        plan = Plan.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a sweep plan this distnet can read ({e}): start the sweep again") from None
    return plan
