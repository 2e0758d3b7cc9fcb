"""sae_ortho: do sparse autoencoders find true features, and does a decoder-orthogonality loss help?

The library behind the study (the folder ``lib/``, installed under the import name ``sae_ortho``).
Sub-packages by concept, lowest layer first; a package imports only from the ones above it in
this list (``tests/test_layers.py`` checks it, and that there are no import cycles):

- ``core``: argument checks (``validation``), locations (``paths``), the one atomic writer
  (``atomic``), pinned CPU numerics (``numerics``), seeds and threads (``reproducibility.setup``),
  the perturbation test's hook (``perturb``).
- ``reporting``: findings written by the notebooks and assembled into the README (``report``),
  figure helpers (``plotting``).
- ``models``: the SAE (ReLU+L1 and TopK, optionally a stack of independent models) and its
  SAELens on-disk format (``saelens_io``).
- ``ortho``: the nearest-neighbour decoder orthogonality penalty and its exact searches (public
  contract: ``sae_ortho.ortho.nearest_neighbour_abs_cos``).
- ``metrics``: MMCS, MCC, feature recovery, composition detection, L0, FVU, dead latents,
  nearest-neighbour |cos| peaks, cross-seed agreement (public contract: ``sae_ortho.metrics.mmcs``).
- ``data``: toy data with ground truth (``toy``), constructed starting points (``constructions``),
  SynthSAEBench (``synthbench``), and the language-model side: model (``lm``), text (``corpus``),
  activation cache (``activations``), the pipeline notebooks 02-04 share (``lm_data``), your
  own activations from files (``tensor_files``).
- ``analysis``: decomposition, summed features, the objective's optimum and value, statistics and
  verdicts (``stats``), matched-sparsity frontiers, convergence, geometry, hierarchy readout, LM
  evaluation.
- ``training``: the training loop (``train``), its checkpoint file, its log (``runlog``), data
  parallelism (``distributed``), the LM training recipe (``recipe``), the command line
  (``train_sae``) and SAELens's training SAEs with the penalty (``saelens_sae``).
- ``experiments``: the store of trained SAEs (``store``), runs keyed by their spec (``runs``),
  stacked sweeps, ablation variants, the recipe study, SynthSAEBench runs.
- ``bench``: cost benchmarks (penalty methods, trainer, data-parallel throughput) and the
  fingerprint of the pinned numerics.
"""
