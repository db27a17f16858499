"""Worker processes for independent fits (classifiers.pool) and the sweep that uses them."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest

from classifiers import pool, sweep
from classifiers.linear import default_n_jobs
from classifiers.pool import TaskFailed, WorkerDied, plan_workers, run_tasks
from classifiers.sweep import FeatureSet, run_sweep

needs_fork = pytest.mark.skipif(not pool.can_fork(), reason="workers are forked (Linux only)")


def _pid_and_cores(value: int) -> tuple[int, int, int]:
    from threadpoolctl import threadpool_info

    limits = {info["num_threads"] for info in threadpool_info()}
    return value, os.getpid(), max(limits | {default_n_jobs()})


@needs_fork
def test_tasks_run_on_other_processes_one_core_each_and_come_back_in_order() -> None:
    started: list[int] = []
    ended: list[int] = []
    tasks = [lambda v=v: _pid_and_cores(v) for v in range(5)]
    out = run_tasks(tasks, 2, on_start=started.append, on_done=lambda i, _: ended.append(i))
    assert [value for value, _, _ in out] == list(range(5))
    pids = {pid for _, pid, _ in out}
    assert os.getpid() not in pids and len(pids) == 2
    assert {cores for _, _, cores in out} == {1}  # torch, BLAS, OpenMP: one thread each
    assert started[:2] == [0, 1] and sorted(started) == sorted(ended) == list(range(5))
    assert default_n_jobs() >= 1  # this process keeps its own cores


def test_one_worker_runs_the_tasks_here_in_order_with_a_heartbeat() -> None:
    calls: list[tuple] = []

    def slow() -> int:
        time.sleep(0.35)
        return os.getpid()

    out = run_tasks(
        [slow, lambda: 7],
        1,
        on_start=lambda i: calls.append(("start", i)),
        on_done=lambda i, v: calls.append(("done", i)),
        on_wait=lambda running: calls.append(("wait", tuple(running))),
        wait_every=0.1,
    )
    assert out == [os.getpid(), 7]
    assert calls[0] == ("start", 0) and calls[-2:] == [("start", 1), ("done", 1)]
    assert ("wait", (0,)) in calls and calls.index(("done", 0)) > calls.index(("wait", (0,)))


def _boom() -> None:
    raise ValueError("no such thing")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@needs_fork
def test_a_task_that_raises_or_kills_its_worker_costs_only_itself() -> None:
    tasks = [_die, _boom, lambda: 1, lambda: lambda: 0, lambda: 2, lambda: 3]
    out = run_tasks(tasks, 2)
    died, raised, one, unpicklable, two, three = out
    assert isinstance(died, WorkerDied) and died.exitcode == -signal.SIGKILL
    assert "SIGKILL" in died.message and "--jobs 1" in died.message
    assert isinstance(raised, TaskFailed) and "ValueError: no such thing" in str(raised)
    assert isinstance(unpicklable, TaskFailed)  # a result that cannot travel back
    assert (one, two, three) == (1, 2, 3)  # a new worker took the dead one's place
    raised_here, one_here = run_tasks([_boom, lambda: 1], 1)  # in this process: the same
    assert isinstance(raised_here, TaskFailed) and "no such thing" in str(raised_here)
    assert one_here == 1


@needs_fork
def test_a_workers_log_records_reach_this_process(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("classifiers.test_pool")

    def task() -> int:
        logger.warning("from pid %d", os.getpid())
        return os.getpid()

    with caplog.at_level(logging.WARNING, logger="classifiers.test_pool"):
        pids = run_tasks([task, task, task], 2)
    messages = [r.getMessage() for r in caplog.records if r.name == "classifiers.test_pool"]
    assert sorted(messages) == sorted(f"from pid {pid}" for pid in pids)


def test_workers_planned_from_cores_tasks_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "can_fork", lambda: True)
    monkeypatch.setattr(pool, "default_n_jobs", lambda: 8)
    monkeypatch.setattr(pool, "available_bytes", lambda: 64 * 2**30)
    assert plan_workers(12, 2**20) == 8
    assert plan_workers(3, 2**20) == 3
    assert plan_workers(12, 2**30) == 8  # 8 GiB each, 64 GiB free
    assert plan_workers(12, 2 * 2**30) == 4
    assert plan_workers(12, 2**40) == 1  # never fewer than one
    monkeypatch.setattr(pool, "available_bytes", lambda: None)  # unknown: no limit
    assert plan_workers(12, 2**40) == 8
    assert plan_workers(12, 2**20, requested=5) == 5
    assert plan_workers(2, 2**20, requested=5) == 2
    with pytest.raises(ValueError, match="at least 1"):
        plan_workers(3, 1, requested=0)
    monkeypatch.setattr(pool, "can_fork", lambda: False)
    assert plan_workers(12, 2**20) == plan_workers(12, 2**20, requested=4) == 1


# ----------------------------------------------------------------------------- the sweep
def _sets() -> list[FeatureSet]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 24))
    out = []
    for name, noise in (("a", 1.5), ("b", 3.0)):
        y = np.repeat(np.arange(3), 40)
        X = (centres[y] + noise * rng.normal(size=(120, 24))).astype(np.float32)
        out.append(FeatureSet(name, X[::2], y[::2], X[1::2], y[1::2], ["x", "y", "z"]))
    return out


HEADS = ["logreg", "linear_svm", "gaussian_nb", "knn", "mlp"]


def _summary(results) -> list[tuple]:
    return sorted(
        (
            r.feature_set,
            r.head,
            repr(r.best_params),
            r.cv_score,
            tuple(r.cv_fold_scores),
            tuple(r.evaluation.y_pred),
        )
        for r in results
    )


@needs_fork
def test_a_sweep_gives_the_same_results_side_by_side_as_one_by_one() -> None:
    lines: list[str] = []
    here = run_sweep(_sets(), heads=HEADS, cv=3, workers=1)
    apart = run_sweep(_sets(), heads=HEADS, cv=3, workers=2, progress=lines.append)
    assert _summary(here) == _summary(apart)
    assert [(r.feature_set, r.head) for r in here] == [(r.feature_set, r.head) for r in apart]
    starts = [line for line in lines if line.endswith(": fitting")]
    assert len(starts) == len(lines) // 2 == 2 * len(HEADS)
    # the longest first: the MLP and the linear heads before naive Bayes and kNN
    assert not any(h in starts[0] for h in ("gaussian_nb", "knn"))


@needs_fork
def test_a_sweep_whose_worker_dies_reports_that_pair_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sweep._fit_head

    def dies_on_knn(fs, spec, *args, **kwargs):
        if spec.name == "knn" and fs.name == "b":
            _die()
        return real(fs, spec, *args, **kwargs)

    monkeypatch.setattr(sweep, "_fit_head", dies_on_knn)
    results = run_sweep(_sets(), heads=["gaussian_nb", "knn"], cv=3, workers=2)
    assert sorted((r.feature_set, r.head) for r in results) == [
        ("a", "gaussian_nb"),
        ("a", "knn"),
        ("b", "gaussian_nb"),
    ]
    (failure,) = results.failures
    assert (failure.feature_set, failure.head) == ("b", "knn")
    assert failure.error.startswith("WorkerDied: its worker process died (killed by SIGKILL")


def test_run_sweep_refuses_a_bad_worker_count() -> None:
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="workers must be None or an integer >= 1"):
            run_sweep(_sets(), heads=["gaussian_nb"], workers=bad)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@needs_fork
def test_an_error_here_kills_the_workers_at_once() -> None:
    import multiprocessing

    pids: list[int] = []
    others = {p.pid for p in multiprocessing.active_children()}  # not the pool's

    def stop(i: int) -> None:
        pids.extend(p.pid for p in multiprocessing.active_children() if p.pid not in others)
        if i == 1:
            raise KeyboardInterrupt  # as Ctrl-C while the first task runs

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_tasks([lambda: time.sleep(30)] * 3, 2, on_start=stop)
    assert time.perf_counter() - start < 10  # not after the 30 s tasks
    assert pids and not any(_alive(pid) for pid in set(pids))


@needs_fork
def test_workers_die_with_the_process_that_forked_them(tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import os, time\n"
        "from classifiers.pool import run_tasks\n"
        f"def task():\n    open({str(tmp_path)!r} + f'/{{os.getpid()}}', 'w').close()\n"
        "    time.sleep(60)\n"
        "run_tasks([task, task], 2)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def test_no_workers_from_a_daemonic_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    from types import SimpleNamespace

    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    assert not pool.can_fork()
    assert run_tasks([os.getpid, os.getpid], 2) == [os.getpid()] * 2


_TORCH_SCRIPT = """
import json, sys
from classifiers.pool import run_tasks
def task():
    return "torch" in sys.modules
seen = run_tasks([task, task, task], 2, uses_torch={flags})
print(json.dumps({{"tasks": seen, "here": "torch" in sys.modules}}))
"""


@needs_fork
@pytest.mark.parametrize(
    ("flags", "loaded"), [([False, False, False], False), ([False, True, False], True)]
)
def test_torch_is_imported_before_forking_only_when_a_task_uses_it(
    flags: list[bool], loaded: bool
) -> None:
    import json
    import subprocess
    import sys

    script = _TORCH_SCRIPT.format(flags=flags)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"tasks": [loaded] * 3, "here": loaded}


def test_uses_torch_must_give_one_flag_per_task() -> None:
    with pytest.raises(ValueError, match="2 entries for 3 tasks"):
        run_tasks([os.getpid] * 3, 2, uses_torch=[True, False])
