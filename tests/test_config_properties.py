"""Every config key and every command-line flag at and past its bounds (issue 25).

The keys come from the schema (``config.keys()``) and the flags from each command's parser, so a key or flag
added later is covered without touching this file. For each value:

- a config key goes through ``distnet train PRESET --set section.key=VALUE --print-config``, run in this
  process (``cli.main``): exit 0 with the value in the printed config, or exit 2 with exactly one stderr line
  naming the key; never a traceback, never exit 1. Where the schema states the bounds (types, ranges,
  allowed names), the outcome must also be the one they say.
- a flag goes through the command's parser and its ``check_args`` (the checks made before any work): fine,
  or one line (a UserError) naming the flag (or, for ``train``, the config key it sets).

Each part runs the boundary values of every key or flag, then Hypothesis (derandomized: the same examples on
every run) draws more values. The counts of keys and flags covered are printed (``pytest -s``).
"""

import contextlib
import importlib
import io
import math
import sys
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distnet import cli
from distnet import config as C
from distnet.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET = "spirals-mlp"
KEYS = C.keys()  # (section, key, Key) of the schema, in its order
HYPOTHESIS = dict(deadline=None, derandomize=True, database=None)


# -- config keys ---------------------------------------------------------------------------------------------

def toml(value):
    """``value`` as a TOML literal for --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c for c in value)
    return f'"{escaped}"'  # a TOML basic string


def past(x, direction):
    """The value just past ``x`` in ``direction`` (+1 or -1): the next integer, or the next float."""
    return x + direction if isinstance(x, int) else math.nextafter(float(x), direction * math.inf)


def bound_values(spec):
    """Numbers at, just outside and just inside each bound of a numeric key."""
    out = []
    for bound, low in ((spec.ge, True), (spec.gt, True), (spec.le, False), (spec.lt, False)):
        if bound is None:
            continue
        outward = -1 if low else 1
        out += [bound, past(bound, outward), past(bound, -outward)]
        if float in spec.type_tuple:
            out += [float(bound), past(float(bound), outward), past(float(bound), -outward)]
    return out


def candidates(section, key, spec):
    """The values a key is tried with: at and past its bounds, every allowed name and a wrong one, wrong types,
    NaN and the infinities, empty strings, lists and tables."""
    types = spec.type_tuple
    out = ["", [], {}, [1], math.nan, math.inf, -math.inf, True]
    if int in types or float in types:
        out += bound_values(spec) + [0, -1, 1, 2 ** 63 - 1, -2 ** 63, 0.5, 1e300, -1e300]
    if str in types:
        names = spec.names()
        out += list(names) + [names[0] + "x", names[0].upper()] if names else ["x", "a b", "runs/x.jsonl"]
    if bool in types:
        out += [False, 1, "true"]
    if list in types:
        out += [[{"type": "dense", "out_features": 2}], [{"type": "dense", "out_features": math.nan}], ["dense"]]
    if dict in types:
        out += [{"name": "normal", "std": 0.1}, {"name": "normal", "std": "x"}, {"name": "nope"}, "he_normal", "x"]
    if (section, key) == ("train", "target"):
        out += [f"{m}={v}" for m in ("accuracy", "loss", "acc") for v in (-1, 0, 0.5, 1, 2, "nan", "inf", "x")]
    return out


def expected(section, spec, value):
    """True/False where the schema's types and bounds decide whether ``value`` is allowed; None where a check
    function, the dry build (layers, optimizer, schedule: the keys a new name needs) or another key has a say
    (then either outcome is fine, if it is clean)."""
    if spec.check is not None or list in spec.type_tuple or dict in spec.type_tuple or section in C.OPEN_SECTIONS:
        return None
    types = spec.type_tuple
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, str):
        names = spec.names()
        return str in types and (names is None or value in names)
    if isinstance(value, int):
        return (int in types or float in types) and spec.in_bounds(value)
    if isinstance(value, float):
        return float in types and math.isfinite(value) and spec.in_bounds(value)
    return False


def run_main(argv):
    """``cli.main(argv)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def same(got, value):
    """The printed value is the one given (an int given for a number key prints as that float)."""
    if isinstance(value, float) and math.isnan(value):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(got, float):
        return got == float(value)
    return got == value and type(got) is type(value)


def check_key(section, key, spec, value):
    """The property for one (key, value); returns "ok" or "refused"."""
    item = f"{section}.{key}={toml(value)}"
    code, out, err = run_main(["train", PRESET, "--set", item, "--print-config"])
    where = f"--set {item}: exit {code}, stderr {err!r}"
    assert code in (0, 2), where
    assert "Traceback" not in err, where
    if code == 0:
        assert err == "", where
        printed = tomllib.loads(out)
        if (section, key) != ("log", "progress") or value != "auto":  # auto is settled: bar or lines
            assert same(printed[section][key], value), f"{where}: printed {printed[section][key]!r}"
    else:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("distnet: error: "), where
        named = f"{section}.{key}" in lines[0] or (key == "name" and section in lines[0])
        assert named, f"{where}: the line does not name {section}.{key}"
    verdict = expected(section, spec, value)
    if verdict is not None:
        assert (code == 0) == verdict, f"{where}: the schema says {'allowed' if verdict else 'refused'}"
    return "ok" if code == 0 else "refused"


def test_every_config_key_at_and_past_its_bounds():
    counts = {"ok": 0, "refused": 0}
    for section, key, spec in KEYS:
        for value in candidates(section, key, spec):
            counts[check_key(section, key, spec, value)] += 1
    print(f"\nconfig keys covered: {len(KEYS)} (all of the schema), values tried: {sum(counts.values())} "
          f"({counts['ok']} accepted, {counts['refused']} refused)")
    assert counts["ok"] and counts["refused"]


def test_every_numeric_key_has_bounds_and_every_string_key_its_names_or_a_check():
    loose = [f"{s}.{k}" for s, k, spec in KEYS if spec.numeric and not spec.bounded]
    assert not loose, f"numeric keys without bounds: {loose}"
    free = [f"{s}.{k}" for s, k, spec in KEYS if spec.type_tuple == (str,) and spec.names() is None
            and spec.check is None and spec.path is None]
    assert free == ["data.dataset"], free  # a catalog name or one's own: used in messages and data/<name>


def test_the_issues_cases():
    for item, named in [("train.seed=-1", "train.seed"), ("train.clip_grad_norm=-1", "train.clip_grad_norm"),
                        ('train.target="accuracy=2"', "train.target"), ('train.target="loss=-1"', "train.target"),
                        ("optimizer.lr=nan", "optimizer.lr"), ("comm.bucket_mb=inf", "comm.bucket_mb"),
                        ("optimizer.momentum=-inf", "optimizer.momentum")]:
        code, _, err = run_main(["train", PRESET, "--set", item, "--print-config"])
        assert code == 2 and err.count("\n") == 1 and named in err, (item, err)


@st.composite
def key_and_value(draw):
    section, key, spec = draw(st.sampled_from(KEYS))
    value = draw(st.one_of(st.sampled_from(candidates(section, key, spec)), st.integers(),
                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                           st.booleans(), st.lists(st.integers(), max_size=2)))
    return section, key, spec, value


@settings(max_examples=150, **HYPOTHESIS)
@given(key_and_value())
def test_any_value_for_any_config_key(case):
    check_key(*case)


# -- command-line flags --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def where(tmp_path_factory):
    return tmp_path_factory.mktemp("flags")


# command -> (the argv before the flag, the argv after it): a command line that passes its checks as it is
def bases(d):
    return {
        "train": (["train", PRESET, "--print-config"], []),
        "eval": (["eval", str(d / "ck")], []),
        "noise": (["noise", str(d / "ck")], []),
        "sweep": (["sweep", PRESET, "--batch-sizes", "32,64", "--target", "accuracy=0.9", "--out", str(d / "sw")],
                  []),
        "plot": (["plot", str(d / "run.jsonl")], []),
        "data": (["data", "prepare", "spirals", "--out", str(d / "data")], []),
        "bench": (["bench", "train", PRESET], []),
        "calibrate": (["calibrate", PRESET, "--out", str(d / "cal.json")], []),
        "plan": (["plan", PRESET, "--calibration", str(d / "cal.json")], []),
        "run": (["run", "-n", "1"], ["--", "train", PRESET]),
    }


SKIP = {"-h", "--help", "--version", "--print-config"}
INTS = ["-1", "0", "1", "2", "3", str(2 ** 31), str(2 ** 63), "1.5", "x", ""]
FLOATS = ["-1", "0", "1e-300", "0.5", "1", "3601", "1e308", "1e309", "nan", "inf", "-inf", "x", ""]


def strings(d):
    return ["", "x", "0", "-1", "nan", "1,2", "8,16,...,64", "accuracy=2", "loss=-1", "accuracy=0.5", "/dev/full",
            "/proc/distnet-test.png", str(d / "new" / "out.png"), "10gbit", "30us"]


@lru_cache(maxsize=None)
def parser(command):
    return cli.build_parser([command])


def sub_parser(argv):
    p = parser(argv[0])
    for word in argv:
        subs = [a for a in p._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
        if subs and word in subs[0].choices:
            p = subs[0].choices[word]
    return p


def flags(d):
    """(command, action, its values) for every option of every command."""
    out = []
    for command, (before, _) in bases(d).items():
        for action in sub_parser(before)._actions:
            names = [o for o in action.option_strings if o not in SKIP]
            if not names or action.dest == "help":
                continue
            if action.nargs == 0:  # a switch: given or not
                values = [None]
            elif action.choices is not None:
                values = [*action.choices, "bogus", ""]
            elif action.type is int:
                values = INTS
            elif action.type is float:
                values = FLOATS
            elif action.type is not None:  # its own parse function (train --batch-size)
                values = INTS + ["auto"]
            else:
                values = strings(d)
            out.append((command, action, values))
    return out


def check_flag(d, command, action, value):
    """The property for one (flag, value): "ok" or "refused"."""
    before, after = bases(d)[command]
    name = max(action.option_strings, key=len)
    if value is None:
        given = [name]
    elif isinstance(action.nargs, int) and action.nargs > 1:
        given = [name, *[value] * action.nargs]
    else:
        given = [f"{name}={value}"] if name.startswith("--") else [name, value]
    argv = [*before, *given, *after]
    module = importlib.import_module(cli.COMMANDS[command][0])
    try:
        args = cli.parse(argv)
        module.check_args(args)
    except UserError as e:
        line = str(e)
        assert "\n" not in line, (argv, line)
        mapped = _config_key(command, action)
        named = any(o in line for o in action.option_strings) or (mapped and mapped in line)
        assert named, f"{argv}: {line!r} does not name {name}"
        return "refused"
    return "ok"


def _config_key(command, action):
    """The config key a train flag sets (its messages may name the key)."""
    from distnet.training import cli as train_cli

    return train_cli.FLAGS.get(action.dest) if command in ("train", "run") else None


def test_every_flag_at_and_past_its_bounds(where):
    counts, covered = {"ok": 0, "refused": 0}, {}
    for command, action, values in flags(where):
        covered.setdefault(command, set()).add(action.dest)
        for value in values:
            counts[check_flag(where, command, action, value)] += 1
    total = sum(len(v) for v in covered.values())
    print(f"\nflags covered: {total} over {len(covered)} commands "
          f"({', '.join(f'{c} {len(v)}' for c, v in covered.items())}), values tried: {sum(counts.values())} "
          f"({counts['ok']} accepted, {counts['refused']} refused)")
    assert set(covered) == set(bases(where)) and counts["ok"] and counts["refused"]


def test_flags_of_the_issue(where):
    cases = [("train", "--seed=-1", "train.seed"), ("train", "--lr=nan", "optimizer.lr"),
             ("train", "--batch-size=0", "train.batch_size"), ("eval", "--top-k=0", "--top-k"),
             ("sweep", "--target=accuracy=2", "--target"), ("sweep", "--target=loss=-1", "--target"),
             ("noise", "--out=/proc/x.png", "--out"), ("plot", "--out=/proc/x.png", "--out"),
             ("eval", "--figures=/proc/figs", "--figures"), ("run", "--backoff=nan", "--backoff"),
             ("data", "--seed=-1", "--seed"), ("data", "--num-train=-1", "--num-train"),
             ("plan", "--latency=1e999", "--latency"), ("calibrate", "--budget=inf", "--budget")]
    for command, flag, named in cases:
        before, after = bases(where)[command]
        try:
            importlib.import_module(cli.COMMANDS[command][0]).check_args(cli.parse([*before, flag, *after]))
        except UserError as e:
            assert "\n" not in str(e) and named in str(e), (command, flag, str(e))
        else:
            raise AssertionError(f"distnet {command} {flag} passed its checks")


@settings(max_examples=120, **HYPOTHESIS)
@given(st.data())
def test_any_value_for_any_flag(where, data):
    command, action, values = data.draw(st.sampled_from(flags(where)))
    value = None if values == [None] else data.draw(st.one_of(
        st.sampled_from(values), st.integers().map(str), st.floats().map(repr),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=10)))
    check_flag(where, command, action, value)
