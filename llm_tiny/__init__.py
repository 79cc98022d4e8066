"""llm_tiny: train GPT-style language models end to end."""

import os

# PyTorch's CPU threads (OpenMP) wait for their next piece of work by spinning. On a machine
# busy with other work the spinning threads take the cores from the ones with work to do: a
# training step of `configs/tiny.yaml` on a busy 2-core machine took 1.4-2.7 s with spinning
# and 0.34-0.56 s with sleeping waiters (docs/troubleshooting.md). libgomp reads this when
# torch is first imported, so it is set here, before any module of the package imports torch;
# a value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
