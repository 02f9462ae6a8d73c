"""Where a step's time goes: data wait, forward, backward, exposed communication wait, optimizer.

``StepTimer`` is an observer: it becomes the run's phase clock (``run.mark``), and ``mark(phase)`` charges
the time since the previous mark to ``phase`` (``None`` charges nothing, e.g. for logging and evaluation).
It keeps every step's phases (up to ``max_steps_kept``), so a run can hand back its per-step timings and
the wait of the last rank to arrive; with a trace path it also writes them at the end as Chrome trace-event
JSON (open in https://ui.perfetto.dev or chrome://tracing): one process row per rank, so a late rank
stands out.
"""

import json
import os
import time

import numpy as np

from .observers.base import Observer

PHASES = ("data", "forward", "backward", "comm", "optimizer")
_COMM = PHASES.index("comm")


def last_arrival(comm_waits):
    """Per step, the comm wait of the rank that reached the collective last: the smallest over ranks. The
    other ranks' waits also hold the time they waited for it (skew), so this is the communication itself.
    ``comm_waits``: one sequence per rank of per-step waits (cut to the shortest)."""
    n = min((len(w) for w in comm_waits), default=0)
    return np.min(np.array([np.asarray(w[:n], np.float64) for w in comm_waits]), axis=0) if n else np.zeros(0)


class StepTimer(Observer):
    def __init__(self, world, enabled=False, trace_path=None, max_steps_kept=200_000):
        self.world = world
        self.enabled = enabled or bool(trace_path)
        self.trace_path = trace_path
        self.max_steps_kept = max_steps_kept
        self.window = np.zeros(len(PHASES))
        self.now = np.zeros(len(PHASES))  # this step's phases so far
        self.steps_in_window = 0
        self.rows = []  # per step: (step, start, *phases), seconds on perf_counter
        self.last = self.start = time.perf_counter()
        self.origin_us = time.time_ns() / 1000 - self.last * 1e6  # perf_counter -> wall-clock microseconds

    # -- as an observer ---------------------------------------------------------------------------------
    def on_start(self, run):
        if self.enabled:
            run.mark = self.mark
        self.mark(None)  # setup is nobody's phase

    def on_batch(self, run, x, y):
        self.mark("data")

    def on_step(self, run, stats):
        self.end_step(stats.step)

    def on_train_line(self, run, fields):
        fields.update(self.summary())

    # -- the clock --------------------------------------------------------------------------------------
    def mark(self, phase):
        now = time.perf_counter()
        if phase is not None:
            self.now[PHASES.index(phase)] += now - self.last
        elif not self.now.any():
            self.start = now  # nothing of this step yet: it starts after the uncharged time (the trace's origin)
        self.last = now

    def end_step(self, step):
        if len(self.rows) < self.max_steps_kept:
            self.rows.append((step, self.start, *self.now))
        self.window += self.now
        self.now[:] = 0.0
        self.steps_in_window += 1
        self.start = self.last

    def summary(self):
        """Mean milliseconds per step of each phase since the last summary (for the metrics lines)."""
        out = {f"ms_{k}": 1e3 * v / max(self.steps_in_window, 1) for k, v in zip(PHASES, self.window)}
        self.window[:] = 0.0
        self.steps_in_window = 0
        return out

    def timings(self):
        """Every rank's kept steps (collective): {"steps": (S,) step numbers, "phases": (ranks, S, phases)
        seconds}, over the steps every rank kept."""
        mine = np.array(self.rows, np.float64).reshape(-1, 2 + len(PHASES))
        everyone = self.world.allgather(mine)
        n = min(len(r) for r in everyone)
        return {"steps": mine[:n, 0].astype(np.int64), "phases": np.stack([r[:n, 2:] for r in everyone])}

    def totals(self, timings=None):
        """Mean milliseconds per step of each phase over the run, leaving out the first step (it pays for
        setup: the reader's start, the first batch, cold caches), and ``ms_comm_last_arrival_mean``, the
        mean over steps of ``last_arrival``. Collective unless ``timings`` (from ``timings()``) is given."""
        t = self.timings() if timings is None else timings
        ph = t["phases"][:, 1:] if t["phases"].shape[1] > 1 else t["phases"]
        out = {f"ms_{k}_mean": 1e3 * float(v) for k, v in zip(PHASES, ph[self.world.rank].mean(axis=0))} \
            if ph.shape[1] else {f"ms_{k}_mean": 0.0 for k in PHASES}
        last = last_arrival(ph[:, :, _COMM])
        out["ms_comm_last_arrival_mean"] = 1e3 * float(last.mean()) if last.size else None
        return out

    def write_trace(self):
        """Gather every rank's phases to rank 0 and write the Chrome trace (collective)."""
        if not self.trace_path:
            return
        mine = []
        for step, start, *phases in self.rows:
            t = start
            for name, dt in zip(PHASES, phases):  # the phases of a step, laid end to end from its start
                mine.append({"name": name, "ph": "X", "pid": self.world.rank, "tid": 0,
                             "ts": round(self.origin_us + t * 1e6, 1), "dur": round(dt * 1e6, 1),
                             "args": {"step": int(step)}})
                t += dt
        everyone = self.world.allgather(mine)
        if self.world.rank == 0:
            from pathlib import Path

            meta = [{"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}}
                    for r in range(len(everyone))]
            events = meta + [e for rank_events in everyone for e in rank_events]
            Path(self.trace_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(self.trace_path).with_name(f".{Path(self.trace_path).name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
            tmp.replace(self.trace_path)
