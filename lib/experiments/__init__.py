"""Experiments: the store of trained SAEs, runs keyed by their spec, sweeps, ablations, studies."""
