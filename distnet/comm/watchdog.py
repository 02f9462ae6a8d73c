"""The stall watchdog: a rank waiting too long on a collective says which ranks have not come, and ends the job.

Every wait on a collective goes through ``Watchdog.wait(done)``, a poll of ``done()`` (MPI's Testall). A wait
that ends quickly costs a clock read per poll and what ``comm.wait`` does between polls (yield the core, by
default), and nothing else: no message travels while training goes well. After ``quiet_s`` the waiting rank
sleeps 1 ms between polls (unless ``comm.wait`` spins) and looks around every ``tick_s``: it answers other
ranks' probes, and, in the training step (phase "step") only:
- after ``warn_s`` (``comm.stall_warn_s``) it asks every other rank where it is (a small message on the
  world's own control communicator). A rank that is itself waiting answers with its step and phase; a rank
  that answers nothing within ``answer_s`` is the stalled one (stopped, hung in a C call, on a lost host).
  The lowest rank among those waiting prints one line naming the others: rank, host, pid, and where each
  was last seen: its own answer, or for a silent rank the last collective every rank had joined;
- after ``abort_s`` (``comm.stall_abort_s``, 0 = never) that rank prints the line again as an error and
  aborts the job (exit 1); the other waiting ranks abort a little later in case it cannot.
A rank cut off from the others (its host's link is down) hears no answer either: it is the lowest rank of its
own side, says so, and ends itself the same way. Nothing can reach it, not even its launcher, so the abort must
not depend on one: ``failures.abort_job`` ends the process itself when MPI_Abort returns or blocks.
Waits outside the step (setup, evaluation, checkpoints: phases whose length depends on a file system, and
where a rank busy writing cannot answer a probe) are bounded too, but with their own, longer limit:
``io_abort_s`` (``comm.stall_io_abort_s``, an hour by default, 0 = never). They warn at ``warn_s`` like the
step, the line saying which phase the waiting rank is in, so a slow checkpoint write shows in the log
without ending the job, while a rank that never comes back still does. Work one rank does alone there
(rank 0 writing a checkpoint) ends in a collective of the observer doing it, so a rank writing a
checkpoint slowly is waited for in that phase, never inside the next step.
"""

import sys
import time
from functools import partial

from .failures import abort_job

PROBE, ANSWER = 71, 72  # tags on the control communicator
WATCHED = "step"  # the phase bounded by abort_s; the others by io_abort_s


def _ranks(ranks):
    return "rank" + ("s " if len(ranks) > 1 else " ") + ", ".join(map(str, ranks))


class Watchdog:
    quiet_s = 0.5  # a wait shorter than this only reads the clock
    tick_s = 0.1  # then it looks around this often
    answer_s = 1.0  # how long a probed rank that is waiting may take to answer (at most warn_s, when shorter)
    grace_s = 3.0  # the other waiting ranks abort this long after the reporting rank should have
    pause = None  # called between polls (comm.wait, set by the world): None spins
    long_pause = staticmethod(partial(time.sleep, 1e-3))  # the pause after quiet_s (unless comm.wait spins)

    def __init__(self, w, warn_s=0.0, abort_s=0.0, io_abort_s=0.0):
        self.w = w
        self.warn_s, self.abort_s, self.io_abort_s = warn_s, abort_s, io_abort_s
        self.seen = (0, "setup")  # the (step, phase) of this rank's last finished wait: every rank joined it
        self.probe = 0  # the number of this rank's latest probe (answers to older ones are dropped)
        self.sending = []  # requests of messages still on their way

    def wait(self, done):
        """Return when ``done()`` (a poll) is true, watching the time as described above."""
        w = self.w
        if not done():
            start = time.monotonic()
            look = start + self.quiet_s
            stall = None
            pause = self.pause
            while not done():
                if pause is not None:
                    pause()  # hand this core to the rank waited for, if it shares it (comm.wait)
                now = time.monotonic()
                if now >= look:
                    look = now + self.tick_s
                    if pause is not None:  # a wait this long (a checkpoint write, a stalled rank): 1 ms
                        pause = self.long_pause  # later at most, and no core kept busy meanwhile
                    self._answer(now - start)
                    abort_s = self.abort_s if w.phase == WATCHED else self.io_abort_s
                    if self.warn_s or abort_s:
                        stall = self._check(stall, now - start, abort_s)
        self.seen = (w.step, w.phase)

    def _answer(self, waited):
        """Answer every probe that has arrived: where this rank is and how long it has waited there."""
        w = self.w
        while (msg := w.fetch(PROBE)) is not None:
            source, probe = msg
            self.sending.append(w.post(source, ANSWER, (probe, w.step, w.phase, waited)))
        if self.sending and w.testall(self.sending):
            self.sending = []

    def _check(self, stall, waited, abort_s):
        """One look at a stalled wait; ``stall`` is what earlier looks learnt (None before the first probe);
        ``abort_s`` is the limit of the phase waited in (0 = never)."""
        first = min(s for s in (self.warn_s, abort_s) if s > 0)
        if stall is None:
            if waited < first:
                return None
            self.probe += 1
            self.sending += [self.w.post(r, PROBE, self.probe) for r in range(self.w.size) if r != self.w.rank]
            return {"asked": waited, "answers": {}, "warned": False}
        while (msg := self.w.fetch(ANSWER)) is not None:
            source, (probe, step, phase, _) = msg
            if probe == self.probe:
                stall["answers"][source] = (step, phase)
        answer_s = min(self.answer_s, self.warn_s or self.answer_s)
        if waited - stall["asked"] < answer_s and len(stall["answers"]) < self.w.size - 1:
            return stall
        reporter = min([self.w.rank, *stall["answers"]])
        if self.warn_s and not stall["warned"] and waited >= self.warn_s:
            stall["warned"] = True
            if self.w.rank == reporter:
                slow = "" if self.w.phase == WATCHED else (
                    " (outside the step a rank busy writing a checkpoint or reading on a slow file system does not "
                    f"answer either; comm.stall_io_abort_s = {abort_s:g} ends the wait)")
                print(f"distnet: warning: {self.message(stall['answers'], waited)}{slow}", file=sys.stderr,
                      flush=True)
        if abort_s and waited >= abort_s:
            if self.w.rank == reporter:
                key = "stall_abort_s" if self.w.phase == WATCHED else "stall_io_abort_s"
                print(f"distnet: error: {self.message(stall['answers'], waited)}; aborting the job "
                      f"(comm.{key} = {abort_s:g})", file=sys.stderr, flush=True)
                abort_job(self.w, 1)
            elif waited >= abort_s + self.grace_s:
                abort_job(self.w, 1)
        return stall

    def message(self, answers, waited):
        """One line: which ranks have not reached this rank's wait, who they are and where they were seen."""
        w = self.w
        here = (w.step, w.phase)
        waiting = sorted([w.rank, *(r for r, where in answers.items() if where == here)])
        others = []
        for r in range(w.size):
            if r in waiting:
                continue
            host, pid = w.whois[r]
            if r in answers:
                step, phase = answers[r]
                where = f"waiting at step {step} ({phase})"
            else:
                step, phase = self.seen
                where = f"not responding, last seen at step {step} ({phase})"
            others.append(f"rank {r} (host {host}, pid {pid}) {where}")
        return (f"stall: {_ranks(waiting)} waited {waited:.0f} s at step {w.step} ({w.phase}) for "
                + "; ".join(others))
