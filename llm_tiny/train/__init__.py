"""The training layer: the loop (`loop`, the `train` command), the optimizers (`optim`), the
learning-rate schedule (`schedule`), the checkpoint format (`checkpoint`), the run directory
(`rundir`), `metrics.csv` (`metrics`), update dynamics (`dynamics`) and profiling
(`profiling`). Importing this package loads none of them."""
