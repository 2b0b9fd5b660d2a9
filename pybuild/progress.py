"""Progress on the terminal: the live build view and transfer progress (pull, push, save).

Three modes, as ``--progress`` names them:

- ``plain``: stable line-by-line logs for CI. A transfer prints a line when it starts, a line at
  25/50/75 % for blobs of 8 MB and more, and a line when it ends (or ``exists``/``mounted``);
  the build log itself is :class:`pybuild.builder.build.Progress`'s.
- ``tty``: a live block at the bottom of the terminal, redrawn in place (``\\r\\x1b[K`` and cursor
  up): the running build step with its elapsed time, the last lines of its output, one line per
  running transfer with a bar and bytes. A finished step or transfer collapses to one line above
  the block; a failing step leaves the tail of its output on the screen.
- ``quiet``: nothing, except (for a build) a failing step and the tail of its output, on stderr.

Standard library only: the CLI imports this module inside its commands.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from typing import Any, Callable

__all__ = ["Screen", "TransferView", "LiveBuildView", "transfer_view", "human_size", "short_digest"]

LIVE_TAIL = 6        # output lines shown under a running step
FAIL_TAIL = 20       # output lines kept for a failing step
MILESTONE_MIN = 8_000_000  # plain mode: blobs at least this big also log 25/50/75 %
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def human_size(n: float) -> str:
    """Bytes as docker prints them: ``0B``, ``512B``, ``2.14MB`` (powers of 1000, 3 digits)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}"


def short_digest(digest: Any) -> str:
    """``sha256:`` and the first 12 hex digits."""
    text = str(digest)
    alg, _, hexpart = text.partition(":")
    return f"{alg}:{hexpart[:12]}" if hexpart else text[:12]


def clean(text: str) -> str:
    """What a terminal line shows of ``text``: after the last carriage return, without escape
    sequences or control characters, tabs as spaces."""
    text = text.rsplit("\r", 1)[-1].expandtabs(4)
    return _CONTROL.sub("", text)


def _fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters (escape sequences do not count)."""
    if "\x1b" not in line:
        return line[:width]
    if len(_CONTROL.sub("", line)) <= width:
        return line
    return _CONTROL.sub("", line)[:width]


class Screen:
    """A block of live lines at the bottom of a terminal, redrawn in place; permanent lines are
    printed above it. ``source`` returns the block's lines; a ticker redraws it 10 times a second
    (for elapsed times) while :meth:`start_ticker` is in effect."""

    def __init__(self, stream: Any, source: Callable[[], list[str]] | None = None,
                 tee: list[str] | None = None) -> None:
        self.stream = stream
        self.source = source or (lambda: [])
        self.tee = tee  # every permanent line is also appended here
        self.lock = threading.RLock()
        self._drawn = 0
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def size(self) -> tuple[int, int]:
        try:
            cols, rows = os.get_terminal_size(self.stream.fileno())
        except (OSError, AttributeError, ValueError):
            cols, rows = 0, 0
        return cols or 80, rows or 24

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K" + "\x1b[1A\x1b[K" * (self._drawn - 1))
            self._drawn = 0

    def _draw(self) -> None:
        cols, rows = self.size()
        lines = [_fit(ln, cols - 1) for ln in self.source()][:max(1, rows - 2)]
        if lines:
            self.stream.write("\r\x1b[K" + "\n\x1b[K".join(lines))
        self._drawn = len(lines)
        self._last_draw = time.monotonic()

    def print(self, text: str) -> None:
        """A permanent line above the live block."""
        if self.tee is not None:
            self.tee.append(text)
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def refresh(self, force: bool = False) -> None:
        """Redraw the block (at most every 50 ms unless ``force``)."""
        with self.lock:
            if not force and time.monotonic() - self._last_draw < 0.05:
                return
            self._erase()
            self._draw()
            self.stream.flush()

    def clear(self) -> None:
        with self.lock:
            self._erase()
            self.stream.flush()

    def start_ticker(self) -> None:
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="pybuild-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.refresh(force=True)
            except (OSError, ValueError):  # the terminal went away: stop drawing, quietly
                return

    def stop(self) -> None:
        """Stop the ticker and erase the block."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(1)
        self._ticker = None
        self.clear()


class _Transfer:
    __slots__ = ("action", "size", "done", "t0", "milestone")

    def __init__(self, action: str, size: int, done: int) -> None:
        self.action, self.size, self.done = action, size, done
        self.t0 = time.monotonic()
        self.milestone = 0


_ONGOING = {"downloading": "downloaded", "uploading": "uploaded", "saving": "saved"}
_FINISHED = {v: k for k, v in _ONGOING.items()}


class TransferView:
    """Renders transfer events: a registry ``ProgressEvent`` (``view(event)``) or
    ``view.event(action, digest, size, done)`` (what :func:`pybuild.store.archive.save` calls).

    ``plain`` writes lines through ``out``; ``tty`` keeps one live line per running blob on
    ``screen`` (see :meth:`live_lines`) and prints a finished blob's line above the block;
    ``quiet`` ignores everything. Events may come from several threads."""

    def __init__(self, mode: str, out: Callable[[str], None] | None = None,
                 screen: Screen | None = None) -> None:
        self.mode = mode
        self.screen = screen
        self._out = out or (lambda s: None)
        self._lock = threading.RLock()
        self._active: dict[str, _Transfer] = {}
        self._done: set[str] = set()
        self.finished: list[str] = []

    def __call__(self, ev: Any) -> None:
        self.event(ev.action, ev.digest, ev.size, ev.done)

    def _emit(self, text: str) -> None:
        if self.mode == "tty" and self.screen is not None:
            self.screen.print(text)
        else:
            self._out(text)

    def event(self, action: str, digest: Any, size: int, done: int = 0) -> None:
        if self.mode == "quiet":
            return
        key = str(digest)
        name = short_digest(digest)
        with self._lock:
            t = self._active.get(key)
            if action in _ONGOING:
                if t is None:
                    t = self._active[key] = _Transfer(action, size, done)
                    if self.mode != "tty":
                        self._emit(f"{action} {name} {human_size(size)}")
                t.done = done
                if self.mode != "tty" and size >= MILESTONE_MIN:
                    quarter = min(3, done * 4 // size) if size else 0
                    while t.milestone < quarter:
                        t.milestone += 1
                        self._emit(f"{action} {name} {25 * t.milestone}% "
                                   f"({human_size(size * t.milestone // 4)}/{human_size(size)})")
            elif action == "resuming":
                if t is None:
                    t = self._active[key] = _Transfer("downloading", size, done)
                t.done = done
                if self.mode != "tty":
                    self._emit(f"resuming {name} at {human_size(done)} of {human_size(size)}")
            elif action in _FINISHED:
                if key in self._done and key not in self._active:
                    return  # told twice (the uploader, then the pusher)
                self._done.add(key)
                t = self._active.pop(key, None)
                took = time.monotonic() - t.t0 if t is not None else 0.0
                line = f"{action} {name} {human_size(size)} in {took:.2f}s"
                self.finished.append(line)
                self._emit(line)
            elif action in ("exists", "mounted"):
                self._active.pop(key, None)
                self._done.add(key)
                line = f"{name} already exists" if action == "exists" else f"mounted {name} from another repository"
                self.finished.append(line)
                self._emit(line)
            else:
                return
        if self.mode == "tty" and self.screen is not None:
            self.screen.refresh(force=action not in _ONGOING or t is None or t.done == 0)

    def live_lines(self) -> list[str]:
        """One line per running transfer: digest, action, a bar, bytes, elapsed time."""
        now = time.monotonic()
        with self._lock:
            items = list(self._active.items())
        out = []
        for key, t in items:
            frac = min(1.0, t.done / t.size) if t.size else 0.0
            filled = int(frac * 20)
            bar = "=" * filled + (">" if filled < 20 else "") + " " * (19 - filled)
            out.append(f"  {short_digest(key)}  {t.action:<11} [{bar}] "
                       f"{human_size(t.done)}/{human_size(t.size)}  {now - t.t0:.1f}s")
        return out


def transfer_view(mode: str, stream: Any) -> tuple[TransferView, Callable[[], None]]:
    """A view for a command that only transfers (pull, push, save): ``tty`` draws on ``stream``
    (a terminal), ``plain`` writes lines to it. Returns the view and a function to call at the
    end (it erases the live block)."""
    if mode == "tty":
        screen = Screen(stream)
        view = TransferView("tty", screen=screen)
        screen.source = view.live_lines
        screen.start_ticker()
        return view, screen.stop

    def out(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()
    return TransferView(mode, out=out), lambda: None


class LiveBuildView:
    """The build's ``tty`` progress (the interface of :class:`pybuild.builder.build.Progress`).

    The live block is the running step (``[stage 1/2] STEP 3/5: RUN make  4.2s``), the running
    transfers of a FROM pull, and the last :data:`LIVE_TAIL` lines of the step's output, dimmed.
    A finished step collapses to ``… RUN make  DONE 4.21s``: its output disappears. A failing step
    is left as ``…  ERROR`` followed by the last :data:`FAIL_TAIL` lines of its output.

    With ``live=False`` (``--progress quiet``) nothing is drawn; the tail of a failing step's
    output is kept in :attr:`failure` (the CLI prints it with the error). ``tee`` collects the
    permanent lines (what stays on the terminal once the live block is gone)."""

    def __init__(self, stream: Any, live: bool = True, tee: list[str] | None = None) -> None:
        self.stream = stream
        self.live = live
        self.mode = "tty" if live else "quiet"
        self.screen = Screen(stream, self._lines, tee)
        self.transfer = TransferView("tty", screen=self.screen)
        self._step: tuple[str, float] | None = None
        self._tail: deque[str] = deque(maxlen=FAIL_TAIL)
        self._count = 0
        self._partial = b""
        self.failure: list[str] = []  # live=False: the failing step's output tail, for the error

    def _lines(self) -> list[str]:
        if self._step is None:
            return self.transfer.live_lines()
        text, t0 = self._step
        cols = self.screen.size()[0]
        tail = list(self._tail)[-LIVE_TAIL:]
        took = f"  {time.monotonic() - t0:.1f}s"
        if len(text) + len(took) > cols - 1:  # keep the elapsed time in view
            text = text[:max(1, cols - 2 - len(took))] + "…"
        return ([text + took] + self.transfer.live_lines()
                + [f"\x1b[2m  {ln[:max(1, cols - 3)]}\x1b[0m" for ln in tail])

    # -- the Progress interface ------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self.live:
            self.screen.print(text)

    def warn(self, text: str) -> None:
        self.line(f"[Warning] {text}")

    def output(self, chunk: bytes) -> None:
        with self.screen.lock:
            self._partial += chunk
            *lines, self._partial = self._partial.split(b"\n")
            for ln in lines:
                self._add(ln)
        if lines and self.live:
            self.screen.refresh()

    def _add(self, raw: bytes) -> None:
        self._tail.append(clean(raw.decode(errors="replace")))
        self._count += 1

    def flush_output(self) -> None:
        with self.screen.lock:
            if self._partial:
                rest, self._partial = self._partial, b""
                self._add(rest)

    def start(self, prefix: str, text: str) -> None:
        with self.screen.lock:
            self._step = (f"{prefix} {text}", time.monotonic())
            self._tail.clear()
            self._count = 0
            self._partial = b""
            if self.live:
                self.screen.refresh(force=True)
        if self.live:
            self.screen.start_ticker()

    def finish(self, prefix: str, text: str, result: str) -> None:
        with self.screen.lock:
            self._step = None
            self._tail.clear()
            if self.live:
                self.screen.print(f"{prefix} {text}  {result}")

    def close(self) -> None:
        """End of the build. A step still running failed: on a terminal it stays on the screen
        with its output's tail; with ``live=False`` that report is kept in :attr:`failure` for
        the error message instead."""
        self.screen.stop()
        with self.screen.lock:
            if self._partial:
                self._add(self._partial)
                self._partial = b""
            if self._step is None:
                return
            text, t0 = self._step
            self._step = None
            report = [f"{text}  ERROR after {time.monotonic() - t0:.2f}s"]
            if self._tail:
                shown = len(self._tail)
                what = f"last {shown} of {self._count} lines" if self._count > shown else "output"
                report += ["------", f" > {what}:"] + [f"   {ln}" for ln in self._tail] + ["------"]
            if not self.live:
                self.failure = report[1:]
                return
            self.stream.write("".join(ln + "\n" for ln in report))
            self.stream.flush()
