"""sae-ortho: do sparse autoencoders find true features, and does a decoder-orthogonality loss help?

Modules, one concept each:

- ``reproducibility``: the one ``setup`` function (seeds, threads, determinism).
- ``toy``: synthetic data with ground-truth features (Anders et al. composed toy, general generator).
- ``sae``: ReLU+L1 ("vanilla") and TopK sparse autoencoders, optionally a stack of independent models.
- ``ortho``: the nearest-neighbour decoder orthogonality penalty.
- ``metrics``: MMCS, MCC, feature recovery, composition detection, L0, FVU, dead latents.
- ``optimum``: the SAE objective's optimum for low-dimensional toy data, by dense search.
- ``train``: the shared training loop (config, progress, checkpoints, resume, incremental stages).
- ``sweep``: grids of small SAEs trained as one stacked model, and their evaluation tables.
- ``plotting``: figure helpers (arrays in, figure out) and stable-name saving.
- ``bench_ortho``: ``python -m lib.bench_ortho``, cost and exactness of the penalty methods.
"""
