"""Reinforcement learning with verifiable rewards: `python -m llm_tiny rl CONFIG` (docs/rl.md).

losses    the math: group advantages, the clipped policy-gradient loss, KL, pass@k (pure)
rewards   the tasks RL can check and the reward of a completion
loop      the RL run: sample with the engine, score, update; metrics, checkpoints, resume
curves    the run's picture (rl.png) from its metrics.csv
"""
