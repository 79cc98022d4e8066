"""Scoring a model: loss, perplexity and bits per byte (`loss`), task evaluations (`taskfile`,
`scoring`, `harness`, the bundled `suite`, `monitor` during training), the lm-eval bridge
(`lmeval`) and the `eval` command (`cli`)."""
