"""sae-ortho: do sparse autoencoders find true features, and does a decoder-orthogonality loss help?

Modules, one concept each:

- ``reproducibility``: the one ``setup`` function (seeds, threads, determinism).
- ``toy``: synthetic data with ground-truth features (Anders et al. composed toy, general generator).
- ``sae``: ReLU+L1 ("vanilla") and TopK sparse autoencoders, optionally a stack of independent models.
- ``ortho``: the nearest-neighbour decoder orthogonality penalty.
- ``metrics``: MMCS, MCC, feature recovery, composition detection (by decoder geometry and by
  activation), L0, FVU, dead latents,
  nearest-neighbour |cos| and its histogram peaks, match fraction across runs.
- ``decompose``: sparse non-negative decomposition of a direction into dictionary rows.
- ``summed``: synthetic data from a dictionary plus sums of its atoms, and how SAEs represent them.
- ``constructions``: starting points built on purpose (duplicated rows, blocking latents, ground truth).
- ``optimum``: the SAE objective's optimum (vanilla or penalised) for 2-D toy data, by dense search.
- ``objective``: the vanilla and penalised objectives of trained SAEs; optimum or optimisation.
- ``stats``: paired differences over seeds, bootstrap intervals, verdicts from the interval.
- ``frontier``: comparisons at matched L0 or FVU along each condition's L1 sweep.
- ``train``: the shared training loop (config, progress, checkpoints, resume, incremental stages).
- ``constructions``: starting points built on purpose (duplicated rows, blocking latents).
- ``optimum``: the SAE objective's optimum for low-dimensional toy data, by dense search.
- ``train``: the shared training loop (config, progress, checkpoints, resume, incremental stages;
  data-parallel over several processes when torch.distributed runs).
- ``distributed``: data-parallel training with torch.distributed (init from torchrun, rank
  slices of the global batch, gradient averaging, the sharded neighbour search).
- ``train_sae``: ``python -m lib.train_sae`` / ``torchrun -m lib.train_sae``, the command line
  that trains one SAE on cached activations or toy data, on one process or many.
- ``sweep``: grids of small SAEs trained as one stacked model, and their evaluation tables.
- ``lm``: the target language model (Pythia-70M, or the offline stand-in), residual-stream
  harvesting that stops at the deepest hooked block, CE loss with a spliced residual.
- ``corpus``: real text obtained from package registries, split by document, tokenised.
- ``activations``: the on-disk activation cache (fp16 shards + metadata + content hash).
- ``lm_data``: model + corpus -> cached activations, the pipeline notebooks 02-04 share.
- ``lm_eval``: L0, FVE, dead/dense latents and CE loss recovered of SAEs on a language model.
- ``saelens_io``: save/load SAEs in the SAELens on-disk format.
- ``runs``: trained SAEs keyed by configuration (train once, reload), incl. on LM activations.
- ``ablations``: named variants of the orthogonality loss, trained over seeds, summarised.
- ``synthbench``: SynthSAEBench (SAELens's ground-truth benchmark): the published 16k config and a
  proportionally scaled one, the model built locally and cached, samples generated once and
  cached, SAELens's evaluator on this project's SAEs.
- ``synthbench_runs``: this project's SAEs and SAELens's own trainers (``SyntheticSAERunner``) on
  the same samples, scored by SAELens's evaluator and this project's metrics.
- ``hierarchy_readout``: absorption, leaning and parent/child composition latents from a ground-truth
  feature hierarchy.
- ``frontier``: metrics interpolated at common L0 values, paired differences over seeds.
- ``convergence``: loss plateau and decoder movement from initialisation.
- ``ablations``: named variants of the orthogonality loss, trained over seeds, compared with intervals.
- ``report``: findings files written by the notebooks; ``python -m lib.report`` puts them into the README.
- ``plotting``: figure helpers (arrays in, figure out) and stable-name saving.
- ``bench_ortho``: ``python -m lib.bench_ortho``, cost and exactness of the penalty methods.
- ``bench_distributed``: ``python -m lib.bench_distributed``, throughput on 1 ... N processes.
"""
