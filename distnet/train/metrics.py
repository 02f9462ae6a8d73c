"""What rank 0 tells the user: metrics JSON lines (the contract in DESIGN.md) and the progress display."""

import json
import math
import sys
import time


class MetricsWriter:
    """JSON lines, one object per event, flushed per line so a crash keeps everything written so far."""

    def __init__(self, path, append=False):
        self.file = None
        if path:
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, event, step, **fields):
        if self.file is None:
            return
        record = {"event": event, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep it readable instead of writing invalid JSON
    if isinstance(v, float):
        return round(v, 6)
    return v


class Progress:
    """A tqdm bar on a terminal; plain lines when output is not a terminal; nothing when quiet."""

    def __init__(self, total_steps, initial=0, quiet=False, enabled=True):
        self.quiet = quiet or not enabled
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1)

    def update(self, n, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)

    def line(self, text):
        """A message that stays (epoch results): above the bar, or on stdout without one."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
