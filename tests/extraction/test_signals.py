"""Signals: `extract` stops cleanly on SIGTERM and Ctrl-C, and its worker processes never outlive
it, not even when it is killed with SIGKILL.

The promise under test (README, "Crash safety and concurrency"): SIGINT exits 130 and SIGTERM
143 with one line on stderr, every finished batch is kept, the store verifies and the next run
extracts only what is missing; after any of the three signals no worker process survives (each
is found by pid in /proc before the signal, and must be gone, or a zombie waiting to be reaped,
a few seconds later). Workers are DataLoader processes of both kinds: replicas (each runs its own
copy of the network; automatic workers on a CPU) and decoders (``--workers N``).
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from featurestore import runtime
from featurestore.store import verify


@pytest.fixture(autouse=True)
def _ctrl_c_reaches_python() -> Any:
    """Python's Ctrl-C handler in force for each test, as in a terminal. A test run started as
    a background job of a shell without job control inherits SIGINT ignored (POSIX), Python
    then keeps it ignored, and so would the CLI children (an ignored signal survives exec):
    every Ctrl-C below would be lost. A handler (not an ignore) is reset to the default at
    exec, so the children get Python's own again."""
    saved = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds processes by pid in Linux /proc"
)

N_IMAGES = 96
BATCH = 4
GONE_WITHIN_S = 3.0
# mobilenet_v3_small with random weights at 64 px: fast, but a batch still takes milliseconds,
# so a signal sent once two batches landed arrives long before the run's end.
ARGS = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--input-size", "64"]


# ---------------------------------------------------------------------------- processes
def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...; index 19 is the start time), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _descendants(pid: int, depth: int | None = None) -> dict[int, str]:
    """Every living descendant of ``pid`` (``depth``: only those that many generations down):
    pid -> start time (to tell a reused pid apart)."""
    parent_of: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] not in "ZX":
            parent_of[int(entry.name)] = (int(fields[1]), fields[19])
    found: dict[int, tuple[str, int]] = {}
    frontier = [(pid, 0)]
    while frontier:
        here, level = frontier.pop()
        for child, (ppid, start) in parent_of.items():
            if ppid == here and child not in found:
                found[child] = (start, level + 1)
                frontier.append((child, level + 1))
    return {p: start for p, (start, level) in found.items() if depth in (None, level)}


def _survivors(procs: dict[int, str], within: float = GONE_WITHIN_S) -> list[int]:
    """The processes of ``procs`` still running (not ended, not a zombie) after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        alive = [
            pid
            for pid, start in procs.items()
            if (f := _stat(pid)) is not None and f[0] not in "ZX" and f[19] == start
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:  # never leave a test's orphan behind, whatever the outcome
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _parts(cache: Path) -> list[Path]:
    return list(cache.glob("*.parts/part-*.h5"))


# ---------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, make_images: Any) -> Path:
    root = tmp_path_factory.mktemp("signals") / "images"
    make_images(root, N_IMAGES, ("a", "b"), size=(40, 32), seed=21)
    return root


def _extract_cmd(source: Path, cache: Path) -> list[str]:
    return [
        *ARGS,
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--json",
        str(source),
    ]


def _until_two_batches_landed(cache: Path, running: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while len(_parts(cache)) < 2 and running():
        assert time.monotonic() < deadline, "no batch landed in 120 s"
        time.sleep(0.002)


def _check_stopped(rc: int | None, code: int, err: str, workers: dict[int, str]) -> None:
    """The signalled run exited ``code`` with one line on stderr (unless killed) and none of
    its ``workers`` (two or more processes) survives it."""
    assert len(workers) == 2, f"expected two worker processes, found {workers}"
    assert rc == code, f"exit {rc}, expected {code} (the run ended first?)\n{err[-3000:]}"
    if code != -signal.SIGKILL:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("interrupted"), err[-3000:]
    alive = _survivors(workers)
    assert not alive, f"worker process(es) {alive} outlived `extract`"


def _store_after(cache: Path, *, merged: bool) -> Path:
    """The store the stopped run left: it verifies and holds some but not all rows; after
    SIGTERM or Ctrl-C its journal was merged on the way out."""
    names = {p.name for p in cache.glob("*.h5")}
    names |= {p.parent.name.removesuffix(".parts") + ".h5" for p in _parts(cache)}
    (name,) = names
    store = cache / name
    if merged:
        assert store.exists() and not _parts(cache), "the stopped run left its journal unmerged"
    report = verify(store)
    assert report.ok, report.problems
    assert BATCH * 2 <= report.n_rows < N_IMAGES, report.n_rows
    return store


def test_cli_sigterm_keeps_batches_exits_143_and_a_rerun_resumes(
    source: Path,
    tmp_path: Path,
    cli_env: Callable[..., dict[str, str]],
    run_cli: Any,
) -> None:
    """The command in its own interpreter, with automatic (replica) workers."""
    cache = tmp_path / "cache"
    env = cli_env(OMP_NUM_THREADS="2")  # automatic workers: one replica per thread
    cmd = [sys.executable, "-m", "featurestore.cli", "extract", *_extract_cmd(source, cache)]
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=fh)
    workers: dict[int, str] = {}
    try:
        _until_two_batches_landed(cache, lambda: proc.poll() is None)
        workers = _descendants(proc.pid, depth=1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        _check_stopped(proc.returncode, 143, err.read_text(errors="replace"), workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(list(workers))

    store = _store_after(cache, merged=True)
    kept = verify(store).n_rows
    done = run_cli("verify", store, env=env)
    assert done.returncode == 0 and b": OK" in done.stdout, done.stdout + done.stderr
    again = run_cli("extract", *_extract_cmd(source, cache), env=env)
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    summary = json.loads(again.stdout)
    assert (summary["reused"], summary["extracted"]) == (kept, N_IMAGES - kept)
    with h5py.File(store, "r") as f:
        keys = f["keys"][...].tolist()
    assert len(keys) == len(set(keys)) == N_IMAGES, "duplicate or missing rows after the resume"
    assert verify(store).ok


def _cli_in_child(args: list[str], mode: str, err: str, group: bool = False) -> None:
    """Target of a process the test fork server starts: the command line's ``main``, as the
    installed command runs it, with stderr to file ``err`` and two workers of kind ``mode``:
    ``replicas`` (automatic), ``decoders`` (``--workers 2``, forked) or ``forkserver``
    (decoders started by a fork server of this process's own, so their parent is not the
    extracting process)."""
    import multiprocessing

    import torch

    from featurestore.cli import main

    if group:
        os.setpgrp()  # a process group of its own, as a shell gives a command
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    torch.set_num_threads(2)
    # A process the test fork server started would start decoders with a fork server too
    # (its default start method); replicas are always forked.
    multiprocessing.set_start_method("forkserver" if mode == "forkserver" else "fork", force=True)
    if mode == "forkserver":
        multiprocessing.set_forkserver_preload(["featurestore.pipeline"])
    workers = [] if mode == "replicas" else ["--workers", "2"]
    main(["extract", *args, *workers], prog_name="featurestore")


@pytest.mark.parametrize(
    ("sig", "mode", "group"),
    [
        (signal.SIGINT, "replicas", True),
        (signal.SIGTERM, "decoders", True),
        (signal.SIGKILL, "replicas", False),
        (signal.SIGKILL, "decoders", False),
        (signal.SIGKILL, "forkserver", False),
    ],
    ids=["ctrl-c-group-replicas", "sigterm-group-decoders", "sigkill-replicas",
         "sigkill-decoders", "sigkill-forkserver"],
)  # fmt: skip
def test_no_worker_outlives_extract_stopped_by_a_signal(
    sig: int, mode: str, group: bool, fork_ctx: Any, source: Path, tmp_path: Path
) -> None:
    """SIGTERM exits 143 and Ctrl-C 130, keeping every finished batch in a store that
    verifies, with the signal sent to the whole process group as a terminal's Ctrl-C or a
    service manager sends it (the test above sends SIGTERM to the process alone, and the
    workers are the main process's children either way); after SIGKILL (to the process alone:
    nothing tells the workers) the store verifies too. No
    worker outlives the run, whether the extracting process forked it (the kernel's parent
    death signal ends it) or a fork server did (the fork server ends with the extracting
    process, and the watchdog checks)."""
    cache = tmp_path / "cache"
    err = tmp_path / "stderr.txt"
    child = fork_ctx.Process(
        target=_cli_in_child, args=(_extract_cmd(source, cache), mode, str(err), group)
    )
    child.start()
    procs: dict[int, str] = {}
    try:
        _until_two_batches_landed(cache, child.is_alive)
        procs = _descendants(child.pid)
        # the workers: with a fork server, its children (it is multiprocessing's, and ends
        # by itself once the extracting process is gone)
        workers = _descendants(child.pid, depth=2 if mode == "forkserver" else 1)
        (os.killpg if group else os.kill)(child.pid, sig)
        child.join(60)
        code = {signal.SIGTERM: 143, signal.SIGINT: 130}.get(sig, -sig)
        text = err.read_text(errors="replace") if err.exists() else ""
        _check_stopped(child.exitcode, code, text, workers)
    finally:
        if child.is_alive():
            child.kill()
        _kill_all(list(procs))
    _store_after(cache, merged=sig != signal.SIGKILL)


def test_a_worker_killed_on_its_own_stops_the_run_with_one_line(
    fork_ctx: Any, source: Path, tmp_path: Path
) -> None:
    """A worker killed by someone else (the OOM killer sends SIGKILL): the run stops with one
    line that says so (exit 1), keeps its finished batches, and no worker is left."""
    cache = tmp_path / "cache"
    err = tmp_path / "stderr.txt"
    child = fork_ctx.Process(
        target=_cli_in_child, args=(_extract_cmd(source, cache), "replicas", str(err))
    )
    child.start()
    workers: dict[int, str] = {}
    try:
        _until_two_batches_landed(cache, child.is_alive)
        workers = _descendants(child.pid, depth=1)
        os.kill(next(iter(workers)), signal.SIGKILL)
        child.join(60)
        text = err.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        assert child.exitcode == 1, (child.exitcode, text[-3000:])
        assert len(lines) == 1 and "a worker process ended unexpectedly" in lines[0], text
        assert not _survivors(workers)
    finally:
        if child.is_alive():
            child.kill()
        _kill_all(list(workers))
    _store_after(cache, merged=True)


class _SlowMean(torch.nn.Module):
    """A stand-in network that takes its time: each row is the image's mean colour; remembers
    every row it computed. Its forward passes after the first two wait (10 s at most) for
    ``interrupted``, so the run cannot end before the interrupt however late the thread that
    sends it runs on a loaded machine (it once came after the last of 10 batches of 0.2 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.computed: list[np.ndarray] = []
        self.interrupted = threading.Event()
        self._passes = itertools.count(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)
        if next(self._passes) > 2:
            self.interrupted.wait(10)
        rows = x.float().mean(dim=(2, 3))
        self.computed.extend(r for r in rows.numpy() if r.any())  # not the zero padding
        return rows


def test_ctrl_c_keeps_the_batches_whose_forward_pass_was_running(
    tmp_path: Path, make_images: Any
) -> None:
    """Decoding in the main process, the forward pass in two threads (two batches in flight):
    on Ctrl-C the batches not started are dropped, those running finish and are stored."""
    from featurestore.extractor import resolve
    from featurestore.pipeline import run_extraction
    from featurestore.runtime import WorkerPlan
    from featurestore.sources import open_source
    from featurestore.store import FeatureStore

    images = tmp_path / "images"
    make_images(images, 40, ("a",))
    src = open_source(images)
    extractor = resolve("mobilenet_v3_small", weights="none", input_size=32)
    store = FeatureStore.for_spec(tmp_path / "cache", extractor.spec)
    model = _SlowMean()

    def interrupt_once_a_batch_landed() -> None:
        deadline = time.monotonic() + 60
        while not list(store.parts_dir.glob("part-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()
        model.interrupted.set()

    timer = threading.Thread(target=interrupt_once_a_batch_landed)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_extraction(
                extractor,
                src.select(None),
                src.loader,
                store,
                device=torch.device("cpu"),
                batch_size=BATCH,
                plan=WorkerPlan(0),
                model=model,
                replicas=2,
                threads=1,
            )
    finally:
        timer.join()
    store.compact()
    _keys, rows = store.read_all()
    computed = {r.tobytes() for r in model.computed}
    stored = {r.tobytes() for r in rows}
    assert len(stored) < 40, "the run ended before the interrupt: no trial"
    assert computed == stored, f"{len(computed - stored)} computed rows were dropped"


# ---------------------------------------------------------------------------- the mechanisms
def _grandchild(how: str, pid_file: str) -> None:
    """Target: fork a grandchild that ties its life to us as ``how`` says, then wait."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            if how == "death-signal":
                assert runtime.set_parent_death_signal()
            else:
                runtime.watch_parent(parent, interval=0.05)
            Path(pid_file).write_text(str(os.getpid()))
            time.sleep(60)
        finally:
            os._exit(0)
    time.sleep(60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("how", ["death-signal", "watchdog"])
def test_each_mechanism_alone_ends_an_orphan(how: str, tmp_path: Path) -> None:
    """The parent death signal (Linux) and the watchdog each end a process whose parent was
    killed with SIGKILL; without either, the grandchild sleeps on for a minute."""
    import multiprocessing

    pid_file = tmp_path / "pid"
    child = multiprocessing.get_context("fork").Process(
        target=_grandchild, args=(how, str(pid_file))
    )
    child.start()
    grandchild = 0
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and child.is_alive()
            time.sleep(0.01)
        grandchild = int(pid_file.read_text())
        start = _stat(grandchild)
        assert start is not None
        child.kill()
        child.join(10)
        assert not _survivors({grandchild: start[19]}, within=2.0)
    finally:
        if child.is_alive():
            child.kill()
        if grandchild:
            _kill_all([grandchild])


def test_sigterm_raises_terminated_only_where_it_may() -> None:
    """In the main thread, with SIGTERM at its default action: SIGTERM raises Terminated (a
    KeyboardInterrupt, exit code 143), a second one would end the process, and the handler is
    put back afterwards; a program that handles SIGTERM itself keeps its handler, and outside
    the main thread nothing changes."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(runtime.Terminated) as caught, runtime.sigterm_interrupts():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, at once
        except runtime.Terminated:
            # while the run stops, a second SIGTERM takes its default action: it ends the process
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            raise
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with runtime.sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)

    handlers: list[object] = []

    def in_a_thread() -> None:
        with runtime.sigterm_interrupts():
            handlers.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert handlers == [signal.SIG_DFL]
