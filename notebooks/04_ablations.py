# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Ablations of the orthogonality loss, and what it costs
#
# **Q11** Which design choices of the orthogonality loss matter? Each choice is changed one at a
# time around the study's proposal (nearest neighbour by |cos| of decoder rows, ties → mean,
# penalty on active latents with gradient into their neighbours, steep −log(1−|cos|)):
#
# | group | variants |
# |---|---|
# | reduction | nearest neighbour vs mean |cos| over all other latents |
# | ties | mean over tied neighbours vs one arbitrary neighbour |
# | scope | active + neighbour gradient vs inactive neighbours frozen vs all latents |
# | shape | −log(1−c) vs linear c, c², a sigmoid that flattens near 1, c²/(1−c) |
# | target | decoder rows (the proposal) vs encoder rows |
# | weight, size | λ_orth sweep (incl. 0) and dictionary size |
# | base | ReLU+L1 vs TopK |
#
# Each runs on toy data with known ground truth (MMCS, MCC, rare features learnt alone,
# composition latents) and on language-model activations (FVE, L0, CE loss recovered, nearest-
# neighbour |cos|), with n_seeds seeds. Two settings are built on purpose: duplicated decoder rows
# (ties at |cos| ≈ 1, where a flattening shape gives almost no gradient) and "blocking" latents
# (the failure mode of the study brief: a rarely-active latent aligned with a useful one).
#
# **Q12** The cost: the orthogonality benchmark's scaling table and figure, with which method to
# use at which size. A summary table of every choice closes the notebook
# (also written to `results/ablation_summary.md`).

# %% tags=["parameters"]
seed: int = 0
threads: int = 2
device: str = "cpu"
n_seeds: int = 3
# Toy: 64 Zipf-firing features correlated in blocks of 4 (notebook 01, Q3)
toy_features: int = 64
toy_rho: float = 0.7
toy_steps: int = 1500
toy_batch: int = 256
toy_l1: float = 0.1
toy_weight: float = 0.01  # λ_orth of the proposal on toy data (notebook 01)
weight_factors: list = [0.1, 0.3, 3.0, 10.0]  # λ sweep, as multiples of the proposal's λ
size_factors: list = [0.5, 2.0]  # dictionary sizes, as multiples of the default size
toy_k: int = 4  # TopK k (the data's mean L0 is ~1.3; k must leave room for co-occurrence)
block_weight: float = 0.1  # λ_orth of the blocking demonstration
# Language model (notebook 02's defaults, so its activation cache is reused)
model: str = "EleutherAI/pythia-70m-deduped"
layer: int = 3
context: int = 128
corpus: str = "python-docs"
train_tokens: int = 500_000
eval_tokens: int = 16_384
lm_latents: int = 512
lm_tokens: int = 100_000  # per SAE: small, so that every variant gets n_seeds seeds
lm_weight: float = 10.0  # λ_orth of the proposal on LM activations (notebook 02)
lm_weight_factors: list = [0.1, 10.0]
lm_size_factors: list = [2.0]
lm_k: int = 32
l1_coeff: float = 1.5
ce_tokens: int = 1024

# %%
import numpy as np
import pandas as pd
import torch

from lib import ablations, constructions, lm_data, metrics, paths, plotting, runs, sweep, toy
from lib.ortho import OrthoConfig
from lib.reproducibility import setup
from lib.sae import SAE, SAEConfig

setup(seed, threads)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 40)
EVAL_SEED = seed + 10_000
TOY_COLS = ["mcc", "mmcs", "alone", "rare_alone", "n_compositions", "fvu", "l0", "nn_cos_mean"]


def bars(df: pd.DataFrame, cols: dict[str, str], title: str):
    """One bar per variant (mean ± std over seeds) for each column in ``cols``."""
    g = df.groupby(["group", "variant"], sort=False)
    mean, std = g[list(cols)].mean(), g[list(cols)].std(ddof=0)
    return plotting.variant_bars(
        [v for _, v in mean.index], {label: (mean[c].to_numpy(), std[c].to_numpy()) for c, label in cols.items()},
        groups=[gr for gr, _ in mean.index], suptitle=title,
    )


# %% [markdown]
# ## Q11 · Every choice on toy data
#
# F features with Zipf firing probabilities 0.3 → 0.003, firing correlated in blocks of 4
# (Gaussian copula, ρ = toy_rho), amplitudes U[0,1), orthogonal embedding (only co-occurrence can
# make combinations); F latents unless the variant sets the size. *Rare* = the quartile of
# features with the lowest firing probability.

# %%
toy_data = toy.ToyData(toy.zipf_copula_config(toy_features, toy_rho), generator=torch.Generator().manual_seed(seed))
probs = toy_data.probs.numpy()
rare = probs <= np.quantile(probs, 0.25)
x_toy = sweep.eval_inputs([toy_data], 4096, EVAL_SEED)[0]
variants = ablations.standard_variants(toy_weight, weight_factors, toy_features, size_factors, k=toy_k)
toy_df, toy_stacks = ablations.run_variants(
    variants, [toy_data] * n_seeds, toy_features, toy_features, n_seeds, x_toy, true=toy_data.directions, rare=rare,
    steps=toy_steps, batch_size=toy_batch, l1=toy_l1, seed=seed, device=device, desc="toy variants",
)
fig = bars(toy_df, {"mcc": "MCC with true features", "rare_alone": "rare features learnt alone",
                    "n_compositions": "composition latents", "fvu": "FVU"},
           f"Q11 toy: {toy_features} correlated features, λ={toy_weight:g} unless stated (mean ± std, {n_seeds} seeds)")
plotting.save_figure(fig, "04_q11_toy_variants")

# %%
# NBVAL_CHECK_OUTPUT
print(ablations.summary(toy_df, ["mcc", "rare_alone", "n_compositions", "fvu", "l0"], digits=2).to_string())

# %% [markdown]
# ### Encoder directions can be orthogonal while decoder directions are not
#
# In the vanilla SAEs above, compare each latent's nearest-neighbour |cos| among **encoder**
# directions (columns of W_enc) with that among **decoder** rows, separately for atom latents and
# for composition latents (classified by the composition detector). A penalty on encoder rows
# sees the first number; the combination lives in the second.

# %%
enc_dec = []
vanilla = toy_stacks["vanilla"]
for i in range(n_seeds):
    W_dec, W_enc = vanilla.W_dec[i].detach(), vanilla.W_enc[i].detach().T
    kinds = np.array(metrics.detect_compositions(W_dec, toy_data.directions).latent_kind)
    for name, W in (("decoder", W_dec), ("encoder", W_enc)):
        nn = metrics.nn_abs_cos_distribution(W)
        for kind in ("atom", "composition"):
            if (kinds == kind).any():
                enc_dec.append({"seed": i, "rows": name, "latent kind": kind, "nn_abs_cos": float(nn[kinds == kind].mean())})
enc_dec = pd.DataFrame(enc_dec)

# %%
# NBVAL_CHECK_OUTPUT
print("Mean nearest-neighbour |cos| of vanilla SAEs' latents (mean ± std over seeds):")
print(sweep.mean_std(enc_dec, ["latent kind", "rows"], ["nn_abs_cos"]).unstack().to_string())

# %% [markdown]
# Trained vanilla SAEs do not give that case by themselves. So it is built on purpose: F = 32
# orthogonal features firing with p = 0.1, correlated in pairs (copula ρ = 0.9); the SAE starts
# with an orthonormal encoder (encoder column i = feature i) but, for 8 pairs (a, b), latent a's
# decoder row is the composition (f_a + f_b)/√2. Encoder directions are exactly orthogonal, decoder
# rows of those pairs have |cos| 0.71. Training then continues with no penalty, the penalty on
# decoder rows (the proposal) or on encoder directions.

# %%
pairs = [(2 * i, 2 * i + 1) for i in range(8)]
enc_data = toy.ToyData(toy.ToyDataConfig(32, 32, p=0.1, structure="copula", rho=0.9, block_size=2),
                       generator=torch.Generator().manual_seed(seed))
x_enc = sweep.eval_inputs([enc_data], 4096, EVAL_SEED)[0]


def composed_start(sae):
    constructions.orthogonal_encoder_composed_decoder(sae, enc_data.directions, pairs)


def enc_dec_cos(sae, i):
    return {"enc_nn_cos": float(metrics.nn_abs_cos_distribution(sae.W_enc.detach().T).mean()),
            "dec_nn_cos": float(metrics.nn_abs_cos_distribution(sae.W_dec.detach()).mean())}


start = SAE(SAEConfig(32, 32), generator=torch.Generator().manual_seed(seed))
composed_start(start)
print("at the start, mean nearest-neighbour |cos|:", {k: round(v, 3) for k, v in enc_dec_cos(start, 0).items()})
enc_variants = [
    ablations.Variant("vanilla", "reference"),
    ablations.Variant("proposal (decoder rows)", "target", toy_weight, OrthoConfig()),
    ablations.Variant("encoder rows", "target", toy_weight, OrthoConfig(target="encoder")),
]
enc_df, _ = ablations.run_variants(
    enc_variants, [enc_data] * n_seeds, 32, 32, n_seeds, x_enc, true=enc_data.directions, steps=toy_steps,
    batch_size=toy_batch, l1=toy_l1, seed=seed, device=device, init=composed_start, extra=enc_dec_cos,
    desc="encoder vs decoder",
)

# %%
# NBVAL_CHECK_OUTPUT
print(sweep.mean_std(enc_df, ["variant"], ["n_compositions", "mcc", "alone", "enc_nn_cos", "dec_nn_cos", "fvu"],
                     digits=2).to_string())

# %% [markdown]
# ### Ties and penalty shape: duplicated decoder rows
#
# The dictionary starts with 20 groups of 3 near-identical latents (decoder and encoder rows
# copied, perturbed by 1e-4 and renormalised), so every latent of a group has two tied nearest
# neighbours at |cos| ≈ 1; 2F latents, so the reconstruction alone has no reason to split them.
# Ties count within 1e-3 here (the proposal's default 1e-6 is for exact ties).
# *Near-duplicates* = latents whose nearest neighbour has |cos| > 0.9 at the end of training.

# %%
dup_variants = [
    ablations.Variant("vanilla", "reference"),
    ablations.Variant("proposal", "reference", toy_weight, OrthoConfig(tie_tol=1e-3)),
    ablations.Variant("one tied neighbour", "ties", toy_weight, OrthoConfig(tie_tol=1e-3, tie_mode="first")),
    *[ablations.Variant(f"shape {s}", "shape", toy_weight, OrthoConfig(shape=s, tie_tol=1e-3))
      for s in ("linear", "square", "sigmoid", "c2_over_1mc")],
]


def duplicated(sae):
    constructions.duplicate_rows(sae, n_groups=20, copies=3, noise=1e-4, generator=torch.Generator().manual_seed(seed))


dup_data = toy.ToyData(toy.ToyDataConfig(toy_features // 2, toy_features // 2, p=0.1),
                       generator=torch.Generator().manual_seed(seed))
x_dup = sweep.eval_inputs([dup_data], 4096, EVAL_SEED)[0]
dup_df, _ = ablations.run_variants(
    dup_variants, [dup_data] * n_seeds, toy_features // 2, toy_features, n_seeds, x_dup, true=dup_data.directions,
    steps=toy_steps, batch_size=toy_batch, l1=toy_l1, seed=seed, device=device, init=duplicated, desc="duplicated rows",
)
fig = bars(dup_df, {"near_duplicates": "near-duplicate latents", "mcc": "MCC with true features", "fvu": "FVU"},
           f"Q11: start from duplicated rows, λ={toy_weight:g} (mean ± std, {n_seeds} seeds)")
plotting.save_figure(fig, "04_q11_duplicates")

# %%
# NBVAL_CHECK_OUTPUT
print(ablations.summary(dup_df, ["near_duplicates", "mcc", "alone", "fvu"], digits=2).to_string())

# %% [markdown]
# ### Scope: the blocking failure mode, built on purpose
#
# F = 32 orthogonal features each firing with p = 0.1; the SAE has F + 8 latents with a random
# start, except 8 "blockers": latents whose decoder row has cos 0.99 with features 0-7 and whose
# encoder bias is −10, so they never fire. With the penalty on active latents only and inactive
# neighbours frozen, a latent that tries to learn a blocked feature is pushed away by the blocker,
# which itself never moves. With gradient into the neighbour (the proposal) or the penalty on all
# latents, the blocker moves out of the way. λ = block_weight and toy_weight.

# %%
blocked = list(range(8))
blk_data = toy.ToyData(toy.ToyDataConfig(32, 32, p=0.1), generator=torch.Generator().manual_seed(seed))
x_blk = sweep.eval_inputs([blk_data], 4096, EVAL_SEED)[0]


def with_blockers(sae):
    constructions.plant_blockers(sae, blk_data.directions, blocked, cos=0.99, generator=torch.Generator().manual_seed(seed))


def blocked_scores(sae, i):
    W = sae.W_dec.detach()
    best = metrics.cosine_matrix(W[:32], blk_data.directions).max(0).values  # learnable latents only
    return {"blocked_learnt": float((best[blocked] >= 0.9).float().mean()),
            "blocked_best_cos": float(best[blocked].mean()),
            "blocker_cos": float((W[32:] * blk_data.directions[blocked]).sum(1).mean())}


blk_variants = [
    ablations.Variant(f"{name} λ={w:g}", "scope", w, cfg)
    for w in (toy_weight, block_weight)
    for name, cfg in (("active + neighbour grad (proposal)", OrthoConfig()),
                      ("active, neighbours frozen", OrthoConfig(neighbour_grad=False)),
                      ("all latents", OrthoConfig(scope="all")))
]
blk_df, _ = ablations.run_variants(
    blk_variants, [blk_data] * n_seeds, 32, 40, n_seeds, x_blk, steps=toy_steps, batch_size=toy_batch,
    l1=toy_l1, seed=seed, device=device, init=with_blockers, extra=blocked_scores, desc="blocking",
)

# %%
# NBVAL_CHECK_OUTPUT
print(sweep.mean_std(blk_df, ["variant"], ["blocked_learnt", "blocked_best_cos", "blocker_cos", "fvu"]).to_string())

# %% [markdown]
# ## Q11 · The same choices on language-model activations
#
# Small SAEs (lm_latents latents, lm_tokens activations each) on notebook 02's cached residual
# stream, so that every variant gets n_seeds seeds within the time budget; λ_orth is on the LM
# scale (inputs normalised to mean squared norm d). CE loss recovered is measured for the first
# seed of each variant on ce_tokens held-out tokens.

# %%
data = lm_data.prepare(lm_data.LMDataConfig(
    model=model, layers=(layer,), context=context, train_tokens=train_tokens, eval_tokens=eval_tokens,
    corpus=corpus, device=device,
))
LABEL = data.lm.label
lm_variants = [
    v for v in ablations.standard_variants(lm_weight, lm_weight_factors, lm_latents, lm_size_factors, k=lm_k)
    if v.name != "shape c2_over_1mc"  # shown on toy data; its gradient explodes at duplicates
]
base = runs.LMSAESpec("04", n_latents=lm_latents, tokens=lm_tokens, l1_coeff=l1_coeff)
lm_df, lm_ce = ablations.run_lm_variants(
    lm_variants, data, layer, n_seeds, base, data.eval[layer].load(),
    ce_tokens=data.eval_tokens[: max(1, ce_tokens // context)].to(data.lm.device), seed=seed, device=device,
)
lm_df["ce_recovered"] = lm_df.variant.map(lm_ce.ce_recovered).where(lm_df.seed == 0)
fig = bars(lm_df, {"fve": "fraction of variance explained", "l0": "L0", "nn_cos_mean": "mean NN |cos|",
                   "dead": "dead latents"},
           f"Q11 LM: {LABEL}, block {layer}, {lm_latents} latents, λ={lm_weight:g} unless stated")
plotting.save_figure(fig, "04_q11_lm_variants")

# %%
# NBVAL_CHECK_OUTPUT
print(ablations.summary(lm_df, ["fve", "l0", "dead", "nn_cos_mean"], digits=3).to_string())
print(f"\nCE loss recovered (seed 0, {lm_ce.iloc[0].clean:.2f} nats clean, {lm_ce.iloc[0].zero:.2f} zero-ablated):")
print(lm_ce.ce_recovered.round(3).to_string())

# %% [markdown]
# ## Q12 · The cost of the penalty
#
# From the orthogonality benchmark (`python -m lib.bench_ortho --scaling`, run on 2 CPU cores at
# d = 768, batch 1024; `results/ortho_scaling.csv`). Each method's training step time (amortised
# over cache refreshes) and peak memory against the dictionary size n, with the vanilla step for
# reference. The table gives the ratio to the vanilla step and the exactness of the chosen
# neighbours (agreement with the exact search).

# %%
bench = pd.read_csv(paths.COMMITTED_RESULTS / "ortho_scaling.csv")
series = {m: (g.n.to_numpy(), g.amortised_s.to_numpy(), g.peak_rss_mb.to_numpy()) for m, g in bench.groupby("method", sort=False)}
fig = plotting.scaling(series, title="Q12: orthogonality penalty cost vs dictionary size (d = 768, 2 CPU cores)")
plotting.save_figure(fig, "04_q12_cost")
vanilla_s = bench[bench.method == "vanilla"].set_index("n").amortised_s
bench["x_vanilla"] = bench.amortised_s / bench.n.map(vanilla_s)

# %%
# NBVAL_CHECK_OUTPUT
print("Step time / vanilla step (amortised):")
print(bench.pivot_table(index="n", columns="method", values="x_vanilla", sort=False).round(2).to_string())
print("\nPeak RSS (MB):")
print(bench.pivot_table(index="n", columns="method", values="peak_rss_mb", sort=False).round(0).to_string())
print("\nNeighbour agreement with the exact search:")
print(bench.pivot_table(index="n", columns="method", values="agreement", sort=False).round(3).to_string())

# %% [markdown]
# ## Summary
#
# Each choice against the proposal: the effect with its spread over seeds, on toy data (MCC,
# composition latents) and on language-model activations (FVE, nearest-neighbour |cos|), and a
# verdict computed from those numbers ("same": the means differ by less than the larger standard
# deviation plus 1%). The recommendation follows from the verdicts.

# %%
# NBVAL_CHECK_OUTPUT
def cell(df, col, digits=3):
    return sweep.mean_std(df, ["variant"], [col], digits)[col]


order = list(dict.fromkeys([*toy_df.variant, *lm_df.variant]))  # toy order, then LM-only variants
table = pd.DataFrame({
    "group": pd.concat([toy_df, lm_df]).groupby("variant").group.first(),
    "toy MCC": cell(toy_df, "mcc"),
    "toy compositions": cell(toy_df, "n_compositions", 2),
    "toy vs proposal": ablations.verdict(toy_df, "mcc", True),
    "LM FVE": cell(lm_df, "fve"),
    "LM NN |cos|": cell(lm_df, "nn_cos_mean"),
    "LM vs proposal": ablations.verdict(lm_df, "fve", True),
}).reindex(order)


def recommend(row) -> str:
    if row.name == "proposal":
        return "the reference"
    verdicts = (row["toy vs proposal"], row["LM vs proposal"])
    if "worse" in verdicts and "better" in verdicts:
        return "trade-off: better in one setting, worse in the other"
    if "worse" in verdicts:
        return "keep the proposal"
    if "better" in verdicts:
        return "prefer this"
    return "no measurable difference"


table["recommendation"] = table.apply(recommend, axis=1)
print(table.fillna("not run").to_string())
paths.RESULTS.mkdir(parents=True, exist_ok=True)
out = paths.RESULTS / "ablation_summary.md"
tmp = out.with_suffix(".md.tmp")
tmp.write_text(
    "# Ablation summary (notebook 04)\n\n"
    f"Written by `notebooks/04_ablations.py` from its run: toy data ({toy_features} correlated features, "
    f"λ={toy_weight:g}) and {LABEL} block {layer} ({lm_latents} latents, λ={lm_weight:g}); mean ± std over "
    f"{n_seeds} seeds. Verdicts compare with the proposal: 'same' when the means differ by less than the "
    "larger standard deviation plus 1%. 'not run': the variant is not part of that setting.\n\n"
    # "|" inside a cell would end it in Markdown: escape it
    + table.fillna("not run").rename(index=lambda x: x.replace("|", "\\|"), columns=lambda x: x.replace("|", "\\|"))
    .to_markdown() + "\n"
)
tmp.replace(out)
print(f"\nwritten to {out.relative_to(paths.OUTPUT_ROOT)}")

# %% [markdown]
# ## Findings
#
# Toy data: 64 correlated Zipf features, λ = 0.01, 3 seeds. Language model: the offline stand-in
# SmolLM2-135M (block 3), 512 latents, 0.1M tokens per SAE, λ = 10, 3 seeds.
#
# **Which choices matter (Q11).**
# - **Nearest neighbour vs mean |cos| over all: matters most.** The mean over all latents is
#   no better than no penalty (toy MCC 0.916 vs vanilla 0.911, 4.3 composition latents each, rare
#   features alone 0.48 vs 0.50), while the nearest-neighbour proposal gives MCC 0.98, 2 ± 0.8
#   compositions and 0.81 of rare features alone. On the LM the mean-over-all penalty leaves the
#   nearest-neighbour |cos| where vanilla has it (0.168 vs 0.17; proposal 0.124).
# - **Ties: no measurable difference.** Starting from 20 groups of 3 duplicated rows, both the mean
#   over tied neighbours and a single neighbour remove all near-duplicates (vanilla keeps 33 ± 4);
#   MCC, FVE and CE are the same in every setting.
# - **Scope: the neighbour gradient matters exactly in the blocking case.** With a rarely-active
#   blocker next to 8 features and λ = 0.1, freezing inactive neighbours leaves all 8 unlearnt
#   (best cos 0.60 ± 0.03; the blockers stay at cos 0.99), while gradient into the neighbour or the
#   penalty on all latents learns all 8 (blockers pushed to cos 0.15-0.19). At λ = 0.01 the frozen
#   variant still learns them (best cos 0.998) and on ordinary data the three scopes are equal.
# - **Shape: steep wins, too steep breaks.** On the correlated toy data linear (MCC 0.96), squared
#   (0.96) and the flattening sigmoid (0.946) are worse than −log(1−c) (0.98). From duplicated rows,
#   −log(1−c) removes every near-duplicate, linear and squared leave 20-21 and the sigmoid 27 (it
#   has almost no gradient at |cos| ≈ 1). c²/(1−c) also removes them but wrecks the dictionary
#   there (MCC 0.53, FVU 0.18): its slope near |cos| = 1 is ~10⁸, and one such step dominates
#   Adam's second-moment estimate for the rows involved long afterwards. On the LM the shapes
#   differ only in the resulting |cos| (0.124-0.15) at equal FVE.
# - **Decoder vs encoder rows: decoder.** The encoder penalty is worse on toy data (MCC 0.956 vs
#   0.98) and leaves the LM decoder |cos| at the vanilla level (0.17). Trained vanilla SAEs do not
#   have orthogonal encoders to begin with (their encoder nearest-neighbour |cos| is *higher* than
#   the decoder's: atoms 0.24 vs 0.18, compositions 0.32 vs 0.27). In the case built on purpose
#   (encoder |cos| 0, decoder 0.35 at the start) the reconstruction loss alone resolves the planted
#   compositions (vanilla also ends with 0 and MCC 1), so there the target makes no difference;
#   the encoder penalty then orthogonalises the encoder (0.06) but not the decoder (0.16 vs 0.14).
# - **Weight.** On toy data MCC rises with λ up to 0.03 (λ × 3: MCC 1.0, no compositions, every
#   rare feature alone) and falls back at 0.1 (0.986, 2.7 compositions). On the LM λ up to 10 costs
#   nothing; λ × 10 = 100 costs FVE (0.792 vs 0.809) and CE loss recovered (0.855 vs 0.883).
# - **Dictionary size.** Half as many latents as features: no variant learns the rare features
#   (0 alone) — the loss cannot create capacity. Twice as many: vanilla learns every feature but
#   also 8.3 ± 4 composition latents, the proposal 0.33 ± 0.5.
# - **Base SAE.** The loss helps TopK as much as ReLU+L1 on toy data (MCC 0.894 → 0.971,
#   compositions 5 → 1.7). On the LM TopK reconstructs better at L0 32 (FVE 0.855, CE recovered
#   0.949) and the loss again only lowers the |cos| (0.161 → 0.107).
#
# On the language model at this scale every variant except the 10x weight reaches the same FVE and
# CE loss recovered within the seed spread, so the LM side cannot rank the penalty variants beyond
# the geometry they leave (SAEs this small and this briefly trained stay close to their
# initialisation, see notebook 02).
#
# **Cost (Q12).** The exact penalty is affordable for small dictionaries only: at n = 4096 (d =
# 768, batch 1024) the chunked exact search costs 2.3x a vanilla step and the naive Gram matrix
# 4.5x; at 16K they cost 4.3x and 10.4x (with 5 GB); at 100K chunked costs 17.7x. The cached
# method (top-8 candidates, refreshed every 100 steps) costs 1.4-1.6x at every size, with
# neighbour agreement 1.0 in the benchmark; OrtSAE's random chunks cost 1.3-1.6x but find the
# true neighbour for only 1-27% of latents; the incremental approach is cheapest (1.25-1.43x) but
# hurts recovery (see README). Use an exact method (chunked, the default) up to a few thousand
# latents, `cached` beyond ~10K, and check `TrainResult.stale_agreement` to choose its refresh
# interval; never the naive n x n matrix.
#
# The summary table above (also in `results/ablation_summary.md`) says the same per choice:
# keep nearest neighbour, a steep −log(1−|cos|) shape and decoder rows; tie handling and scope
# make no difference on ordinary data, but only the neighbour gradient (or the all-latent scope)
# escapes blocking latents; λ around 0.01-0.03 on toy data.
