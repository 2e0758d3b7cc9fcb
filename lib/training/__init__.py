"""Training: the loop (``train``), checkpoints, the run log, data parallelism, the LM recipe, the command line,
SAELens's training SAEs with the penalty (``saelens_sae``, imported on its own: it registers them with SAELens)."""
