"""Data: toy data with ground truth, constructed starts, SynthSAEBench, and LM activations."""
