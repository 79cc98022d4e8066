"""Where the time of a training step goes: `train.profile_steps: N`.

After `WARMUP` steps (the first ones pay for allocations, lazy initialisation and, with
`train.compile`, compilation), the next N optimizer steps run under `torch.profiler`. When
they are done the run directory gets:

- `profile.txt`: the operators that took the most time of their own (self time, not counting
  the operators they call), a table from `key_averages()`; on CUDA sorted by device time;
- `trace.json`: a Chrome trace of those steps, for `chrome://tracing` or https://ui.perfetto.dev.

Profiling slows the profiled steps down (each operator is recorded), so it is off by default
and its steps' timings are not the run's speed. Only the main process writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WARMUP = 5
TOP = 30  # operators in the table


class StepProfiler:
    """`with StepProfiler(steps, out_dir, device_type, log) as prof:` then `prof.step()` after
    every optimizer step; does nothing when `steps` is 0, or off rank 0 (`log`, a
    `metrics.RunLog`, is disabled there)."""

    def __init__(self, steps: int, out_dir: str | Path, device_type: str, log: Any) -> None:
        self.steps, self.out_dir, self.device_type, self.log = (
            steps,
            Path(out_dir),
            device_type,
            log,
        )
        self._prof: Any = None

    def __enter__(self) -> StepProfiler:
        if self.steps > 0 and self.log.enabled:
            from torch.profiler import ProfilerActivity, profile, schedule

            activities = [ProfilerActivity.CPU]
            if self.device_type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._prof = profile(
                activities=activities,
                schedule=schedule(wait=0, warmup=WARMUP, active=self.steps, repeat=1),
                on_trace_ready=self._write,
            )
            self._prof.__enter__()
        return self

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def __exit__(self, *exc: Any) -> None:
        if self._prof is not None:
            self._prof.__exit__(*exc)
            self._prof = None

    def _write(self, prof: Any) -> None:
        sort = "self_cuda_time_total" if self.device_type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=TOP)
        (self.out_dir / "profile.txt").write_text(
            f"{self.steps} optimizer steps after {WARMUP} of warm-up, by self time\n{table}\n",
            encoding="utf-8",
        )
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        self.log(f"profile of {self.steps} steps: {self.out_dir / 'profile.txt'} and trace.json")
