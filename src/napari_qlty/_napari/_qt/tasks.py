"""One long job of a widget, run off the GUI thread.

The job is a plain generator: it never touches Qt, reports progress by yielding, and
polls :attr:`BackgroundTask.cancel_requested` (a ``threading.Event``) to stop early.
What it yields, returns or raises comes back on the GUI thread, exactly one outcome per
run: ``"done"``, ``"cancelled"`` or ``"error"``. Run and Cancel buttons follow the run,
and closing the widget cancels it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from .._common import Failed
from .base import ViewerWidget


class BackgroundTask:
    """Starts, cancels and reports one run at a time for ``owner`` (a ViewerWidget)."""

    def __init__(
        self,
        owner,
        run_button,
        cancel_button=None,
        *,
        on_yield: Callable[[object], None],
        on_return: Callable[[object], None],
        on_error: Callable[[BaseException], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.run_button, self.cancel_button = run_button, cancel_button
        self.on_yield, self.on_return, self.on_error = on_yield, on_return, on_error
        self.on_cancel = on_cancel
        self.cancel_requested = threading.Event()
        self.worker = None
        #: "done", "cancelled", "error", or None while running / before the first run
        self.outcome: str | None = None
        # closing the dock (napari unparents its widget) or deleting it stops the run; the
        # callbacks hold the event alone, which outlives this object
        flag = self.cancel_requested
        owner.native.destroyed.connect(lambda *_: _stop(flag))
        self._closing = _OnUnparent(owner.native, lambda: _stop(flag))

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Callable[..., Iterator], *args, **kwargs) -> bool:
        """Run ``job(*args, **kwargs)`` (a generator) in a thread; False if one is running."""
        if self.running:
            return False
        from napari.qt.threading import create_worker

        self.outcome = None
        self.cancel_requested.clear()
        worker = create_worker(_guarded, job, args, kwargs, self.cancel_requested, _start_thread=False)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.aborted.connect(self._cancelled)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._set_buttons(running=True)
        worker.start()
        return True

    def fail(self, error: BaseException) -> None:
        """Report an error found before the job could start (outcome "error")."""
        self.outcome = "error"
        self.on_error(error)

    def cancel(self) -> None:
        """Ask the job to stop (at its next poll, or after what it yields next); the job is
        closed in its own thread, so what it holds (a store's lock, a file) is let go."""
        if self.worker is not None:
            self.cancel_requested.set()

    # -- outcomes ---------------------------------------------------------------------------
    def _yielded(self, item) -> None:
        if self.outcome is None:
            self.on_yield(item)

    def _returned(self, result) -> None:
        if self.outcome is not None:
            return
        if isinstance(result, Failed):
            self._errored(result.error)
        elif self.cancel_requested.is_set():
            self._cancelled()
        else:
            self.outcome = "done"
            self.on_return(result)

    def _errored(self, error: BaseException) -> None:
        if self.outcome is None:
            self.outcome = "error"
            self.on_error(error)

    def _cancelled(self) -> None:
        if self.outcome is None:
            self.outcome = "cancelled"
            if self.on_cancel is not None:
                self.on_cancel()

    def _finished(self) -> None:
        if self.outcome is None and self.cancel_requested.is_set():
            self._cancelled()  # however the worker's signals were ordered, a cancel is a cancel
        self.worker = None
        self._set_buttons(running=False)

    def _set_buttons(self, running: bool) -> None:
        try:
            self.run_button.enabled = not running
            if self.cancel_button is not None:
                self.cancel_button.enabled = running
        except RuntimeError:  # the widget is gone
            pass


def _stop(flag: threading.Event) -> None:
    try:
        flag.set()
    except AttributeError:  # the interpreter is tearing the widget's objects down
        pass


def _OnUnparent(widget, callback):
    """Call ``callback`` when ``widget`` loses its parent (napari closing its dock)."""
    from qtpy.QtCore import QEvent, QObject

    class Filter(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
                callback()
            return False

    f = Filter(widget)
    widget.installEventFilter(f)
    return f


def _guarded(job, args, kwargs, cancel: threading.Event):
    """The worker's generator: the job's items until it ends, fails or is cancelled.

    An exception is returned as :class:`Failed` (superqt re-raises returned exceptions)
    and shown by the widget. A cancel closes the job here, in the worker's thread, so its
    ``finally`` blocks run before the widget hears of the outcome.
    """
    gen = job(*args, **kwargs)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield item
            if cancel.is_set():
                return None
    except Exception as e:  # handed to the GUI thread
        return Failed(e)
    finally:
        gen.close()


class TaskWidget(ViewerWidget):
    """A widget with one background job at a time (export, training, inference).

    A subclass sets ``self.task`` and implements ``_prepare()``, which checks every field
    (a bad one raises, and the message is shown) and returns ``(job, args, kwargs)``, and
    ``_starting()``, which clears what the last run showed.
    """

    task: BackgroundTask

    @property
    def running(self) -> bool:
        return self.task.running

    @property
    def worker(self):
        return self.task.worker

    @property
    def outcome(self) -> str | None:
        """"done", "cancelled", "error", or None before the first run and while running."""
        return self.task.outcome

    def run(self, *_) -> None:
        """Check the fields and start the job in a background thread."""
        if self.running:
            return
        try:
            job, args, kwargs = self._prepare()
        except Exception as e:
            self.task.fail(e)
            return
        self._starting()
        self.task.start(job, *args, **kwargs)

    def _prepare(self) -> tuple:
        raise NotImplementedError

    def _starting(self) -> None:
        pass
