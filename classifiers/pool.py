"""Independent fits side by side on worker processes: a sweep's pairs on every core.

A sweep's (feature set, head) pairs share nothing but their rows, and most of a small fit's time
is spent in Python between short matrix products, which a second thread cannot shorten but a
second process can. :func:`run_tasks` runs such tasks on ``workers`` processes, in the caller's
order (the longest first), and reports each as it starts and ends.

Workers are forked from the calling process where the platform forks (Linux), so they share
its rows copy-on-write: nothing is pickled on the way in, only each task's result on the way
back; torch is imported once before they are forked (:func:`classifiers.linear.load_torch`),
and they share it, unless no task uses it (``uses_torch``). Each worker runs on one core
(:func:`classifiers.linear.use_cores`: torch's threads, the BLAS and OpenMP pools, and the
eigen- and QR decompositions alike). That is the fastest use of the cores for these small
problems, and it is also what makes forking safe: a process forked after an OpenMP pool has
run (a forward pass, a previous fit) hangs if it starts OpenMP threads again (GNU libgomp).
The decompositions run on one thread in the calling process too (:mod:`classifiers.linear`),
so a fit gives the same numbers in a worker as outside one.

A worker that dies (killed for memory, a crash in native code) costs only the task it was
running: that task's result is a :class:`WorkerDied`, a new worker takes its place, and the
other tasks go on. Workers die with the calling process, and are killed at once if it stops on
an error or Ctrl-C. Log records a task emits in a worker are re-emitted in the calling process,
through the same loggers (and their filters), when its result arrives.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from threadpoolctl import threadpool_limits  # a required dependency of scikit-learn

from classifiers.linear import available_bytes, default_n_jobs, load_torch, use_cores

__all__ = ["TaskFailed", "WorkerDied", "can_fork", "describe", "plan_workers", "run_tasks"]

#: Memory a worker may need, as a multiple of the largest task's rows (its copies of the rows on
#: the device, standardised and projected, and its fits' working arrays).
_MEMORY_PER_ROW_BYTE = 8


@dataclass(frozen=True)
class WorkerDied:
    """The result of a task whose worker process ended before it answered."""

    exitcode: int | None

    @property
    def message(self) -> str:
        code = self.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
            if -code == signal.SIGKILL:
                how += " (the system may have run out of memory)"
        else:
            how = f"exit code {code}"
        return (
            f"its worker process died ({how}); to fit it in the calling process, rerun with "
            "--jobs 1 (run_sweep: workers=1)"
        )


def can_fork() -> bool:
    """Whether workers can be forked here: on Linux, from a process that may have children
    (not itself a daemonic worker, such as one of this module's)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


def plan_workers(tasks: int, row_bytes: int, requested: int | None = None) -> int:
    """Worker processes for ``tasks`` independent fits whose largest has ``row_bytes`` of rows.

    ``requested`` (at least 1) is taken as given, but never more than the tasks. ``None``: one
    per core this process may use, at most the tasks and at most what the available memory
    holds (about :data:`_MEMORY_PER_ROW_BYTE` times ``row_bytes`` each); 1 (no workers: the
    caller runs the tasks itself) where the platform cannot fork.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"workers must be at least 1, got {requested}")
        return max(1, min(requested, tasks)) if can_fork() else 1
    if not can_fork():
        return 1
    free = available_bytes()
    room = tasks if free is None else free // max(1, _MEMORY_PER_ROW_BYTE * row_bytes)
    return max(1, min(default_n_jobs(), tasks, room))


#: The tasks of the current :func:`run_tasks` call, read by its forked workers.
_TASKS: Sequence[Callable[[], Any]] = ()


class _Collect(logging.Handler):
    """Keeps a task's log records, formatted, to send back with its result."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None
        record.exc_info = record.exc_text = record.stack_info = None
        self.records.append(record)


def _serve(conn: Any) -> None:
    """A worker's loop: receive a task index, run it, send back (ok, value, log records)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the calling process decides when to stop
    _die_with_parent()
    use_cores(1)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    collect = _Collect()
    root.addHandler(collect)
    with threadpool_limits(limits=1):
        while True:
            try:
                index = conn.recv()
            except EOFError:
                return
            if index is None:
                return
            collect.records = []
            try:
                answer: tuple[bool, Any] = (True, _TASKS[index]())
            except BaseException:  # noqa: BLE001 - reported to the calling process
                answer = (False, traceback.format_exc())
            try:
                conn.send((*answer, collect.records))
            except Exception:  # noqa: BLE001 - e.g. a result that cannot be pickled
                conn.send((False, traceback.format_exc(), collect.records))


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that forked it ends, however it ends
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere a worker ends after its current task."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


#: prctl's option number for the signal sent when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


class _Worker:
    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


class TaskFailed(RuntimeError):
    """A task raised in its worker; the message is the worker's traceback."""


def describe(outcome: WorkerDied | TaskFailed) -> str:
    """One line for a task that gave no result: ``"WorkerDied: ..."``, or the last line of
    the task's traceback (``"ValueError: ..."``)."""
    if isinstance(outcome, WorkerDied):
        return f"WorkerDied: {outcome.message}"
    lines = str(outcome).strip().splitlines()
    return lines[-1] if lines else repr(outcome)


def run_tasks(
    tasks: Sequence[Callable[[], Any]],
    workers: int,
    *,
    uses_torch: Sequence[bool] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    on_wait: Callable[[list[int]], None] | None = None,
    wait_every: float | None = None,
) -> list[Any]:
    """Run every task (a function of no arguments) on ``workers`` forked processes, in order of
    start; return their results in the tasks' order.

    ``uses_torch[i]`` says whether task ``i`` may import torch (``None``: every task may):
    torch is imported here before the workers are forked, so that they share it, unless no
    task uses it. A task said not to use torch that does import it only takes longer.

    A task that raises gives a :class:`TaskFailed` (holding the worker's traceback) as its
    result, one whose worker died a :class:`WorkerDied`; the others are not affected.
    ``on_start(i)`` is called as task ``i`` is handed to a worker, ``on_done(i, result)`` as
    its result arrives (after its log records), and ``on_wait(running)`` every ``wait_every``
    seconds in which no result arrived. With ``workers`` 1 (or where the platform cannot fork)
    the tasks run here, one after another, with the same calls.
    """
    global _TASKS
    if uses_torch is not None and len(uses_torch) != len(tasks):
        raise ValueError(f"uses_torch has {len(uses_torch)} entries for {len(tasks)} tasks")
    if workers <= 1 or len(tasks) <= 1 or not can_fork():
        return _run_here(tasks, on_start, on_done, on_wait, wait_every)
    results: list[Any] = [None] * len(tasks)
    if uses_torch is None or any(uses_torch):
        load_torch()  # once, before forking: the workers share it
    _TASKS = tasks
    context = multiprocessing.get_context("fork")
    pending = iter(range(len(tasks)))
    pool: list[_Worker] = []
    finished = False
    try:
        with _flushed():
            pool = [_Worker(context) for _ in range(min(workers, len(tasks)))]
        for worker in pool:
            _hand(worker, pending, on_start)
        while any(w.task is not None for w in pool):
            busy = [w for w in pool if w.task is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_every)
            if not ready:
                if on_wait:
                    on_wait([w.task for w in busy if w.task is not None])
                continue
            for i, worker in enumerate(pool):
                if worker.task is None or not _answered(worker, ready):
                    continue
                index, worker.task = worker.task, None
                results[index] = _receive(worker)
                if isinstance(results[index], WorkerDied):
                    worker.kill()
                    with _flushed():
                        pool[i] = worker = _Worker(context)
                if on_done:
                    on_done(index, results[index])
                _hand(worker, pending, on_start)
        finished = True
    finally:
        _TASKS = ()
        for worker in pool:  # stopped when done; killed at once on an error or Ctrl-C
            if finished:
                worker.stop()
                worker.process.join(timeout=5)
            worker.kill()
    return results


def _run_here(
    tasks: Sequence[Callable[[], Any]],
    on_start: Callable[[int], None] | None,
    on_done: Callable[[int, Any], None] | None,
    on_wait: Callable[[list[int]], None] | None,
    wait_every: float | None,
) -> list[Any]:
    """:func:`run_tasks` in this process, one task after another."""
    results: list[Any] = []
    for i, task in enumerate(tasks):
        if on_start:
            on_start(i)
        with _beating(on_wait, [i], wait_every):
            try:
                results.append(task())
            except Exception:  # noqa: BLE001 - as in a worker: this task's result
                results.append(TaskFailed(traceback.format_exc()))
        if on_done:
            on_done(i, results[i])
    return results


@contextlib.contextmanager
def _beating(
    on_wait: Callable[[list[int]], None] | None, running: list[int], every: float | None
) -> Iterator[None]:
    """While the block runs, call ``on_wait(running)`` every ``every`` seconds (a thread)."""
    if on_wait is None or not every:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            on_wait(running)

    thread = threading.Thread(target=beat, name="pool-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _flushed() -> Iterator[None]:
    """Flush the standard streams before forking, so a worker does not write them again."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    yield


def _hand(worker: _Worker, pending: Iterator[int], on_start: Callable[[int], None] | None) -> None:
    index = next(pending, None)
    if index is None:
        return
    worker.task = index
    if on_start:
        on_start(index)
    worker.conn.send(index)


def _answered(worker: _Worker, ready: list[Any]) -> bool:
    return worker.conn in ready or worker.process.sentinel in ready


def _receive(worker: _Worker) -> Any:
    """The worker's answer, its log records re-emitted here; a :class:`WorkerDied` if it ended
    without one."""
    try:
        if not worker.conn.poll():
            raise EOFError
        ok, value, records = worker.conn.recv()
    except (EOFError, OSError):
        worker.process.join(timeout=5)
        return WorkerDied(worker.process.exitcode)
    for record in records:
        logging.getLogger(record.name).handle(record)
    return value if ok else TaskFailed(value)
