"""The book runner's terminal progress: one line per chapter, cells done / total and the time elapsed."""
from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, TextIO


class ChapterProgress:
    """A chapter's progress on the terminal (``stream``, default stderr): cells done / total and time elapsed, in
    place on a TTY (redrawn every second), else a plain line every ``every`` seconds (default 30).

    papermill counts the cells: its ``progress_bar`` takes a tqdm's arguments (:meth:`tqdm_kwargs`), and that
    tqdm writes its ``n/total`` into this object (its file), which draws the line. Only papermill's counter
    passes through here, never the kernel's output: the executed notebook holds no progress."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float | None = None) -> None:
        self.label, self.stream = label, sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if every is not None else (1.0 if self.tty else 30.0)
        self.done, self.total, self.t0 = 0, 0, time.perf_counter()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def tqdm_kwargs(self) -> dict[str, Any]:
        return {"desc": self.label, "file": self, "bar_format": "{n}/{total}", "mininterval": 0, "leave": False,
                "ascii": True}

    def write(self, text: str) -> int:  # the tqdm's status, e.g. "\r3/12"
        if m := re.search(r"(\d+)/(\d+)", text):
            self.done, self.total = int(m[1]), int(m[2])
            if self.tty:
                self.show()
        return len(text)

    def flush(self) -> None:
        pass

    def line(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{self.label}: {self.done}/{self.total or '?'} cells, {s // 60}:{s % 60:02d} elapsed"

    def show(self) -> None:
        with self._lock:
            self.stream.write(f"\r{self.line()}\x1b[K" if self.tty else f"{self.line()}\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.show()

    def __enter__(self) -> "ChapterProgress":
        self.t0 = time.perf_counter()
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ticker.join()
        if self.tty:  # clear the line for what the runner prints next
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
