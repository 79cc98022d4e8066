"""Running a sweep: each trial is `python -m llm_tiny train TRIAL/config.yaml` in a subprocess
of its own, so that a crash in one trial cannot take the sweep down. `run_sweep` skips the
trials `results.csv` already holds, runs the rest `jobs` at a time and rewrites `results.csv`
after each; Ctrl-C (or SIGTERM) stops every running trial, and the same command resumes."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llm_tiny.config import save_config
from llm_tiny.sweep import results
from llm_tiny.sweep.space import Trial, one_line, plan_trials
from llm_tiny.sweep.spec import SweepSpec
from llm_tiny.train import metrics
from llm_tiny.train.rundir import CONFIG_FILE


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads per trial so that jobs × threads never exceeds the cores.

    >>> threads_per_job(2, cores=8), threads_per_job(3, cores=8), threads_per_job(4, cores=2)
    (4, 2, 1)
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // jobs)


class Processes:
    """The training subprocesses in flight, so that Ctrl-C can stop every one of them.

    Trials start in a session of their own, so the terminal's Ctrl-C reaches only the sweep;
    the sweep then stops them itself (`stop_all`) and marks them interrupted rather than
    failed, which is what lets the next run of the same spec re-run them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen] = {}
        self.stopped = False

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen | None:
        """Start `cmd`, or return None once the sweep is stopping."""
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self._running[proc.pid] = proc
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Refuse new trials, ask the running ones to stop, kill those that do not."""
        with self._lock:
            self.stopped = True
            procs = list(self._running.values())
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def run_trial(trial: Trial, metric: str, processes: Processes) -> Trial:
    """Train one trial in a subprocess; fill in its status, metric and timings."""
    assert trial.config is not None
    config_path = trial.out_dir / CONFIG_FILE
    save_config(trial.config, config_path)  # creates the trial's folder
    (trial.out_dir / "trial.json").write_text(
        json.dumps({"id": trial.id, "values": trial.values}, indent=2, default=str) + "\n",
        encoding="utf-8",
    )
    # A stale metrics.csv from an interrupted attempt must not be read as this one's result.
    (trial.out_dir / metrics.METRICS_FILE).unlink(missing_ok=True)
    threads = str(trial.config.train.threads or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "llm_tiny", "train", str(config_path)]
    t0 = time.perf_counter()
    with (trial.out_dir / "train.log").open("w", encoding="utf-8") as log:
        proc = processes.start(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        if proc is None:
            trial.status = "interrupted"
            return trial
        try:
            _, stderr = proc.communicate()
        finally:
            processes.finished(proc)
        log.write(stderr)
    trial.wall_s = time.perf_counter() - t0
    if processes.stopped:
        trial.status = "interrupted"
        return trial
    if proc.returncode != 0:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"train exited with status {proc.returncode}"
        trial.status, trial.error = "failed", one_line(last)
        return trial
    try:
        final = metrics.final_metrics(metrics.read_metrics(trial.out_dir / metrics.METRICS_FILE))
    except (OSError, ValueError, KeyError) as e:
        trial.status, trial.error = "failed", one_line(f"cannot read metrics: {e}")
        return trial
    trial.val_loss, trial.val_bpb = final["val_loss"], final["val_bpb"]
    trial.tokens_per_s = final["tokens_per_s"]
    trial.iters = None if math.isnan(final["iters"]) else int(final["iters"])
    trial.metric = final[metric]
    if math.isfinite(trial.metric):
        trial.status = "ok"
    else:
        trial.status = "failed"
        trial.error = f"final {metric} is {trial.metric} (diverged or never evaluated)"
    return trial


def run_sweep(
    spec: SweepSpec,
    jobs: int = 1,
    retry_failed: bool = False,
    cli_overrides: dict[str, Any] | None = None,
) -> list[Trial]:
    """Run (or resume) a sweep; return its trials ranked best first."""
    log = functools.partial(print, flush=True)  # flushed, so `| tee` shows the progress live
    cores = os.cpu_count() or 1
    if jobs > cores:
        log(f"sweep: --jobs {jobs} is more than the {cores} cores; running {cores} at a time")
        jobs = cores
    threads = threads_per_job(jobs, cores)
    keys = list(spec.space)
    trials = plan_trials(spec, threads, cli_overrides)
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    results_path = spec.sweep_dir / "results.csv"
    previous = results.read_results(results_path)

    todo = []
    for t in trials:
        row = previous.get(t.id)
        if t.config is None:
            log(f"sweep: trial {t.id} {results.values_text(t)}: invalid config: {t.error}")
        elif row is not None and row.get("status") == "ok":
            results.restore(t, row, spec.metric)
            t.out_dir = Path(row.get("out_dir") or t.out_dir)
            log(f"sweep: trial {t.id} already finished ({spec.metric} {t.metric:.4f}), skipped")
        elif row is not None and row.get("status") == "failed" and not retry_failed:
            results.restore(t, row, spec.metric)
            log(f"sweep: trial {t.id} failed before, skipped (--retry-failed re-runs it)")
        else:
            todo.append(t)
    lock = threading.Lock()
    results.write_results(results_path, trials, keys)
    log(
        f"sweep: {len(trials)} trials ({spec.method}), {len(todo)} to run, "
        f"{jobs} at a time with {threads} thread(s) each; results in {results_path}"
    )
    processes = Processes()

    def one(t: Trial) -> None:
        with lock:
            if processes.stopped:
                return
            log(f"sweep: trial {t.id} {results.values_text(t)}: training in {t.out_dir}")
        run_trial(t, spec.metric, processes)
        with lock:
            if t.status == "interrupted":
                return
            done = f"{spec.metric} {t.metric:.4f}" if t.status == "ok" else f"failed: {t.error}"
            log(f"sweep: trial {t.id} {done} ({t.wall_s:.1f} s)")
            results.write_results(results_path, trials, keys)

    if todo and not any(k.startswith("data.") for k in spec.space):
        # NOTE: trials that share the base's tokenizer and token files would race to prepare
        # them; preparing once here (a no-op when they are up to date) leaves nothing to race on.
        from llm_tiny.data import prepare_data

        prepare_data(todo[0].config.data, log=lambda m: log(f"sweep: {m}"))
    # Threads only wait on the subprocesses; the trials themselves run in parallel processes.
    with ThreadPoolExecutor(max_workers=jobs) as pool, _terminate_as_interrupt():
        try:
            for future in [pool.submit(one, t) for t in todo]:
                future.result()
        except KeyboardInterrupt:
            processes.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            results.write_results(results_path, trials, keys)
            log("sweep: interrupted; run the same command again to resume")
            raise

    ranked = results.rank(trials, spec.mode)
    results.write_results(results_path, ranked, keys)
    log("\n" + results.format_table(ranked, keys, spec.metric))
    if any(t.status == "ok" for t in trials):
        best = ranked[0]
        results.write_best(spec.sweep_dir / "best.yaml", best, spec)
        results.plot_sweep(spec.sweep_dir / "sweep.png", trials, keys, spec.metric, spec.mode)
        log(
            f"\nsweep: best {best.id} {results.values_text(best)} {spec.metric} {best.metric:.4f}; "
            f"wrote {spec.sweep_dir / 'best.yaml'} and {spec.sweep_dir / 'sweep.png'}"
        )
    else:
        log("\nsweep: no trial succeeded; see the error column and each trial's train.log")
    return ranked


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while trials run: the trials live in sessions of their own,
    so a sweep killed outright would leave them running. (Main thread only, like any handler.)"""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
