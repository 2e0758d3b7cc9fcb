"""Training: the loop (``train``), checkpoints, data parallelism, the LM recipe, the command line."""
