"""A background thread that runs an iterator a few items ahead; its exceptions reach the consumer."""

import queue
import threading

POLL_S = 0.05


class _Failure:
    def __init__(self, exc):
        self.exc = exc


_DONE = object()


class Prefetch:
    """Iterate over ITEMS in a daemon thread, at most DEPTH items ahead. Use ``close()`` or ``with``."""

    def __init__(self, items, depth=2):
        self.queue = queue.Queue(maxsize=max(1, depth))
        self.stopped = threading.Event()
        self.finished = False
        self.thread = threading.Thread(target=self._work, args=(items,), name="distnet-prefetch", daemon=True)
        self.thread.start()

    def _work(self, items):
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, never swallowed
            self._put(_Failure(e))
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    def _put(self, item):
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self):
        return self

    def __next__(self):
        while not self.finished:
            try:
                item = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                if self.stopped.is_set() or not self.thread.is_alive() and self.queue.empty():
                    self.finished = True
                continue
            if item is _DONE:
                self.finished = True
            elif isinstance(item, _Failure):
                self.close()
                raise item.exc
            else:
                return item
        raise StopIteration

    def close(self, timeout=10.0):
        """Stop the thread and wait for it (it finishes its current item first)."""
        self.stopped.set()
        self.finished = True
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
