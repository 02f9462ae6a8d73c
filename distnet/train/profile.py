"""Where a step's time goes: data wait, forward, backward, exposed communication wait, optimizer.

``mark(phase)`` charges the time since the previous mark to ``phase`` (``None`` charges nothing, e.g. for
logging and evaluation). With a trace path, every phase of every step on every rank is also kept and
written at the end as Chrome trace-event JSON (open it in https://ui.perfetto.dev or chrome://tracing):
one process row per rank, so a late rank stands out.
"""

import json
import time

PHASES = ("data", "forward", "backward", "comm", "optimizer")


class StepTimer:
    def __init__(self, world, enabled=False, trace_path=None, max_events=200_000):
        self.world = world
        self.enabled = enabled or bool(trace_path)
        self.trace_path = trace_path
        self.max_events = max_events
        self.window = dict.fromkeys(PHASES, 0.0)
        self.total = dict.fromkeys(PHASES, 0.0)
        self.steps_in_window = 0
        self.steps = 0
        self.events = []
        self.last = time.perf_counter()
        self.origin_us = time.time_ns() / 1000 - self.last * 1e6  # perf_counter -> wall-clock microseconds
        self.step = 0
        self.first_step = dict.fromkeys(PHASES, 0.0)
        self.comm_waits = []  # this rank's comm wait per step (seconds), for the last-arrival figure
        self._comm_now = 0.0

    def mark(self, phase):
        now = time.perf_counter()
        if phase is not None:
            dt = now - self.last
            self.window[phase] += dt
            if phase == "comm":
                self._comm_now += dt
            if self.trace_path and len(self.events) < self.max_events:
                self.events.append((phase, self.last, dt, self.step))
        self.last = now

    def end_step(self, step):
        if self.steps == 0:
            self.first_step = dict(self.window)  # setup costs: reader start, first batch, caches
        if self.enabled and len(self.comm_waits) < self.max_events:
            self.comm_waits.append(self._comm_now)
        self._comm_now = 0.0
        self.steps_in_window += 1
        self.steps += 1
        self.step = step + 1

    def summary(self):
        """Mean milliseconds per step of each phase since the last summary (for the metrics lines)."""
        n = max(self.steps_in_window, 1)
        out = {f"ms_{k}": 1e3 * v / n for k, v in self.window.items()}
        for k, v in self.window.items():
            self.total[k] += v
        self.window = dict.fromkeys(PHASES, 0.0)
        self.steps_in_window = 0
        return out

    def totals(self):
        """Mean milliseconds per step of each phase over the run, leaving out the first step (which pays
        for setup: the reader's start, the first batch, cold caches), for the summary line; plus
        ``ms_comm_last_arrival_mean``: per step the smallest comm wait over ranks, which is the wait of the
        rank that arrived last, i.e. communication without the skew between ranks (a collective call)."""
        self.summary()
        if self.steps < 2:
            out = {f"ms_{k}_mean": 1e3 * v / max(self.steps, 1) for k, v in self.total.items()}
        else:
            out = {f"ms_{k}_mean": 1e3 * (v - self.first_step[k]) / (self.steps - 1) for k, v in self.total.items()}
        waits = self.world.allgather(self.comm_waits[1:])
        n = min(len(x) for x in waits)
        out["ms_comm_last_arrival_mean"] = 1e3 * sum(min(x[i] for x in waits) for i in range(n)) / n if n else None
        return out

    def write_trace(self):
        """Gather every rank's events to rank 0 and write the Chrome trace (a collective call)."""
        if not self.trace_path:
            return
        mine = [{"name": ph, "ph": "X", "pid": self.world.rank, "tid": 0, "ts": round(self.origin_us + t * 1e6, 1),
                 "dur": round(dt * 1e6, 1), "args": {"step": s}} for ph, t, dt, s in self.events]
        everyone = self.world.allgather(mine)
        if self.world.rank == 0:
            from pathlib import Path

            meta = [{"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}}
                    for r in range(len(everyone))]
            events = meta + [e for rank_events in everyone for e in rank_events]
            Path(self.trace_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(self.trace_path).with_suffix(".tmp")
            tmp.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
            tmp.replace(self.trace_path)
