"""What rank 0 tells the user: metrics JSON lines (the contract in DESIGN.md) and the progress display."""

import json
import math
import os
import sys
import time

from .errors import UserError


class MetricsWriter:
    """JSON lines, one object per event, flushed per line so a crash keeps everything written so far."""

    def __init__(self, path, append=False):
        self.file, self.path = None, path
        if path:
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, event, step, **fields):
        if self.file is None:
            return
        record = {"event": event, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items()})
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: the user's to fix, one line, not a traceback
            raise UserError(f"cannot write metrics file {self.path}: {os.strerror(e.errno) if e.errno else e}: "
                            "free space there (the lines written so far are kept)") from None

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def read_records(path):
    """A metrics file's lines as one run. A resumed run appends a ``start`` line at its checkpoint's step; the
    lines the interrupted run wrote after that step (redone since) are dropped, and so are lines cut short
    by a kill. Returns (records, segments): the (start time, last kept time) of each run that wrote lines."""
    records, segments = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for text in f:
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "event" not in rec or "step" not in rec:
                continue
            if rec["event"] == "start":
                records = [r for r in records if r["step"] <= rec["step"]]
                if segments:  # the interrupted run's useful time ends at its last line kept
                    a = segments[-1][0]
                    segments[-1][1] = max([a, *(r["time"] for r in records if r.get("time", a) >= a)])
                segments.append([rec.get("time", 0.0), rec.get("time", 0.0)])
            records.append(rec)
            if segments and "time" in rec:
                segments[-1][1] = rec["time"]
    return records, [tuple(s) for s in segments]


def elapsed(records, segments):
    """Each record's running time in seconds since the run began, restarts' lost time left out."""
    out, before, i = [], 0.0, 0
    for rec in records:
        while i + 1 < len(segments) and rec.get("time", 0) >= segments[i + 1][0]:
            before += segments[i][1] - segments[i][0]
            i += 1
        out.append(before + rec.get("time", segments[i][0] if segments else 0) - (segments[i][0] if segments else 0))
    return out


def train_windows(records, warmup=0, batch=None):
    """The windows of "train" metric lines that measure training alone, as (first step, steps, seconds):
    each line covers the steps after the previous train line up to its own; left out are windows that
    start before WARMUP (the first holds start-up) and windows that cross an epoch end (they hold the
    next epoch's reader start). ``batch`` (the global batch) turns samples/s back into seconds."""
    out, prev_step, prev_epoch = [], 0, None
    for rec in (r for r in records if r.get("event") == "train"):
        start, n = prev_step, rec["step"] - prev_step
        crossed = prev_epoch is not None and rec["epoch"] != prev_epoch
        prev_step, prev_epoch = rec["step"], rec["epoch"]
        if start >= warmup and not crossed and n > 0:
            out.append((start, n, n * batch / rec["samples_per_s"] if batch else None))
    return out


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep it readable instead of writing invalid JSON
    if isinstance(v, float):
        return float(f"{v:.7g}")  # significant digits: a squared gradient norm of 1e-8 must not become 0
    return v


PROGRESS_MODES = ("auto", "bar", "lines", "none")


def progress_mode(requested="auto"):
    """"bar", "lines" or "none": REQUESTED, where "auto" defers to DISTNET_PROGRESS, then to the terminal."""
    mode = os.environ.get("DISTNET_PROGRESS", "auto") if requested == "auto" else requested
    if mode not in PROGRESS_MODES:
        raise UserError(f"progress mode {mode!r} (DISTNET_PROGRESS or --progress) is not one of "
                        f"{', '.join(PROGRESS_MODES)}")
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    return mode


class Progress:
    """Rank 0's progress: a tqdm bar, plain lines, or nothing.

    ``mode`` "auto" picks the bar when stderr is a terminal and lines otherwise. Under mpiexec a rank's
    stderr is a pipe even when the user watches a terminal, so the launcher cannot be seen from here:
    ``--progress bar`` or ``DISTNET_PROGRESS=bar`` (launch/local.sh sets it on a terminal) asks for the bar.
    Lines mode prints the epoch results and, for long logs (batch jobs), a status line every ``every_s``.
    """

    def __init__(self, total_steps, initial=0, mode="auto", every_s=30.0):
        mode = progress_mode(mode)
        self.mode, self.total, self.done, self.initial, self.every_s = mode, total_steps, initial, initial, every_s
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=total_steps, initial=initial, unit="step", file=sys.stderr, smoothing=0.1,
                            dynamic_ncols=tty, ncols=None if tty else 110, mininterval=0.1 if tty else 0.5)

    def update(self, n, **postfix):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        elif self.mode == "lines" and time.perf_counter() - self.last_line >= self.every_s:
            self.last_line = now = time.perf_counter()
            stats = " ".join(f"{k} {_fmt(v)}" for k, v in postfix.items())
            rate = (self.done - self.initial) / max(now - self.start, 1e-9)
            eta = f" ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 else ""
            print(f"  step {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%) {stats}{eta}",
                  flush=True)

    def set_total(self, total_steps):
        """The run's length changed (a growing batch takes fewer steps)."""
        if total_steps != self.total:
            self.total = total_steps
            if self.bar is not None:
                self.bar.total = total_steps

    def line(self, text):
        """A message that stays (epoch results): above the bar, or on stdout without one. Once the bar is
        closed, bar mode's lines still go where the bar went (stderr): on stdout, a separate pipe under
        mpiexec, a line could reach the terminal before the bar's closing newline and join its last line."""
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr if self.mode == "bar" else sys.stdout, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
