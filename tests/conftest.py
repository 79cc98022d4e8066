"""Test-wide settings.

NOTE: the suite runs on 2-core machines, often beside subprocess tests (torchrun, CLIs). Tiny
models gain nothing from a second intra-op thread and lose a lot when threads contend, so
in-process tests and the subprocesses they start use one thread each.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
