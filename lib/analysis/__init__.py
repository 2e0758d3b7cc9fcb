"""Analysis of trained SAEs: decomposition, optima and objectives, statistics and verdicts,
frontiers at matched sparsity, convergence, hierarchy readout, evaluation on a language model."""
