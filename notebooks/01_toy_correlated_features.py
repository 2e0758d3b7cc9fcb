# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Toy correlated features: true features or combinations?
#
# When true features co-occur, an SAE can lower its objective by learning *combinations*
# ("A and B together") instead of the features, and rare features may not be learnt at all.
# This notebook answers questions Q1-Q6 of the study brief on toy data with known ground truth,
# each with and without the decoder-orthogonality loss (Q5):
#
# - **Q1** Anders et al. (2024), "Sparse autoencoders find composed features in small toy models":
#   exps 1-3, every trained SAE compared with the objective's optimum computed independently of
#   training (dense search over decoder angles), over a grid of L1 coefficient x learning rate.
# - **Q2** the same structure (and larger ones) embedded in d = 2 ... 128.
# - **Q3** features with power-law firing probabilities: which are learnt alone, only inside
#   combinations, or not at all.
# - **Q4** correlation strength (Gaussian copula, as SAELens's synthetic data) x dictionary size.
# - **Q6** the limit argument: inputs spread over continuous directions, L0 vs dictionary size.
#
# Every number below comes from this run; spread is the standard deviation over seeds.
# Many small SAEs are trained at once as one stacked model (models along a leading dimension).

# %% tags=["parameters"]
seed: int = 0
threads: int = 1  # the toy tensors are tiny: one thread is faster than two (no sync overhead)
device: str = "cpu"
# Scale knobs: the defaults run in a few minutes on 2 CPU cores.
n_seeds: int = 5
steps: int = 1500  # optimiser steps per toy SAE
batch_size: int = 256
n_eval: int = 2048  # fixed evaluation samples per setting
ortho_weight: float = 0.01  # lambda_orth of the "ortho" condition (steep -log(1-|cos|) shape)
# Q1
q1_l1: list = [0.03, 0.1, 0.3]
q1_lr: list = [1e-3, 3e-3, 1e-2, 3e-2]
# Q2
q2_dims: list = [2, 8, 32, 128]
q2_structures: list = [[2, 2], [3, 3], [4, 4]]  # [n_sets, set_size]
q2_l1: float = 0.1
# Q3
q3_features: int = 64
q3_rho: float = 0.7
q3_steps: int = 3000
# Q4
q4_features: int = 32
q4_rhos: list = [0.0, 0.3, 0.6, 0.9]
q4_sizes: list = [16, 32, 64]
# Q6
q6_d: int = 3
q6_sizes: list = [4, 16, 64, 256]
q6_l1: float = 0.1
q6_steps: int = 5000  # large dictionaries in 3-D need more steps to converge (FVU is shown)
q6_batch: int = 128

# %%
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lib import metrics, optimum, plotting, sweep, toy
from lib.ortho import OrthoConfig
from lib.reproducibility import setup

setup(seed, threads)
pd.set_option("display.width", 160)
ORTHO = OrthoConfig(shape="neglog")  # the study's proposal: nearest neighbour, ties -> mean, active only
conditions = {0.0: "vanilla", ortho_weight: f"ortho (λ={ortho_weight:g})"}
EVAL_SEED = seed + 10_000  # evaluation sets come from their own stream, not the training data's


# %% [markdown]
# ## Q1 · Anders et al. experiments 1-3, against the objective's optimum
#
# Four features in two mutually exclusive sets {x1, x2} and {y1, y2}; every sample has one x and
# one y active. Exp. 1: both share one amplitude U[0,1) (perfectly correlated); exp. 2:
# independent amplitudes; exp. 3: with probability 0.75 the sample is a single one-hot feature.
# Following Anders et al., a ReLU-output toy model (Elhage et al.) with 2 hidden dimensions is
# trained on each experiment's features; SAEs with 4 latents are trained on its hidden activations.
#
# **The optimum, independently of training.** For a decoder D (4 unit rows) and decoder bias b,
# no encoder can beat the per-sample non-negative lasso min_c ||x - b - cD||² + λ|c|₁; in 2-D it
# is solved exactly by enumerating supports of size ≤ 2 (`lib.optimum`). Its mean over a fixed
# evaluation set, minimised over all sorted 4-tuples of decoder angles on a 15° grid and then
# refined by gradient descent, is the optimum every trained SAE's objective is compared with
# (loss gap) together with the Hungarian-matched angle between its decoder rows and the optimum's.
# An SAE "reaches the optimum" when its loss gap is below 1% and its angle error below 5°.

# %%
q1_rows, q1_dirs, q1_optima, embeddings = [], [], {}, {}
for exp in (1, 2, 3):
    W, tms_loss = toy.fit_tms_embedding(toy.ToyData(toy.anders_config(exp)))
    embeddings[exp] = W
    data = toy.anders_data(exp, W)
    X = sweep.eval_inputs([data], n_eval, EVAL_SEED)[0]
    for l1 in q1_l1:
        q1_optima[exp, l1] = optimum.search_optimum(X, n_latents=4, l1=l1)
    rows = sweep.grid(n_seeds, l1=q1_l1, lr=q1_lr, ortho_weight=list(conditions))
    sae = sweep.train_stack(
        rows, [data] * len(rows), d=2, n_latents=4,
        steps=steps, batch_size=batch_size, ortho=ORTHO, seed=seed + exp, device=device,
    )
    ev = sweep.evaluate_stack(sae, X, rows.l1.to_numpy())
    opt = [q1_optima[exp, l1] for l1 in rows.l1]
    ev["gap"] = (ev.loss.to_numpy() - np.array([o.loss for o in opt])) / np.array([o.loss for o in opt])
    ev["angle_err"] = [metrics.matched_angle_error(sae.W_dec[i].detach(), o.decoder) for i, o in enumerate(opt)]
    ev["mmcs_true"] = [metrics.mmcs(sae.W_dec[i].detach(), W) for i in range(len(rows))]
    q1_rows.append(pd.concat([rows.assign(exp=exp, tms_loss=tms_loss), ev], axis=1))
    q1_dirs += [sae.W_dec[i].detach().numpy() for i in range(len(rows))]
q1 = pd.concat(q1_rows, ignore_index=True)
q1["reached"] = (q1.gap < 0.01) & (q1.angle_err < 5)
q1["condition"] = q1.ortho_weight.map(conditions)

# %% [markdown]
# The toy model's feature directions (black) and the optimum decoder (dashed red) for λ = 0.1;
# the blue rows are the vanilla SAEs trained at λ = 0.1 with every learning rate and seed.

# %%
# NBVAL_CHECK_OUTPUT
l1_show = 0.1 if 0.1 in q1_l1 else q1_l1[0]
for exp in (1, 2, 3):
    o = q1_optima[exp, l1_show]
    composed = toy.composed_directions(embeddings[exp], set_size=2)
    print(
        f"exp {exp}: optimum loss {o.loss:.4f}; optimum vs true features MMCS "
        f"{metrics.mmcs(o.decoder, embeddings[exp]):.3f}, vs composed (x+y) directions MMCS "
        f"{metrics.mmcs(o.decoder, composed):.3f}"
    )
# exp 1's optimum is the composed directions (the claim of the finding below)
assert metrics.mmcs(q1_optima[1, l1_show].decoder, toy.composed_directions(embeddings[1], 2)) > 0.99
pick = (q1.l1 == l1_show) & (q1.ortho_weight == 0)
fig = plotting.directions_2d(
    [[q1_dirs[i] for i in np.flatnonzero(pick & (q1.exp == e))] for e in (1, 2, 3)],
    [f"exp {e}" for e in (1, 2, 3)],
    [q1_optima[e, l1_show].decoder.numpy() for e in (1, 2, 3)],
    [embeddings[e].numpy() for e in (1, 2, 3)],
    suptitle=f"Anders et al. toy, λ={l1_show}: trained decoders vs optimum",
)
plotting.save_figure(fig, "01_q1_directions")

# %% [markdown]
# How often training reaches the optimum, over the L1 coefficient x learning rate grid
# (fraction of seeds), for vanilla SAEs and with the orthogonality loss.

# %%
reach = {
    (e, c): q1[(q1.exp == e) & (q1.condition == c)].pivot_table(index="l1", columns="lr", values="reached")
    for e in (1, 2, 3)
    for c in conditions.values()
}
fig = plotting.heatmaps(
    [reach[e, c].to_numpy() for c in conditions.values() for e in (1, 2, 3)],
    [f"exp {e}, {c}" for c in conditions.values() for e in (1, 2, 3)],
    q1_l1, q1_lr, xlabel="learning rate", ylabel="L1 coefficient",
    suptitle="Fraction of seeds that reach the objective's optimum", ncols=3,
)
plotting.save_figure(fig, "01_q1_reach_optimum")

# %%
# NBVAL_CHECK_OUTPUT
q1_summary = q1.groupby(["exp", "condition"], sort=False).agg(
    reached=("reached", "mean"),
    median_gap=("gap", "median"),
    min_gap=("gap", "min"),
    median_angle_err=("angle_err", "median"),
    mmcs_true=("mmcs_true", "mean"),
).round(3)
print(q1_summary)
# No trained SAE may beat the independently computed optimum by more than the search's precision.
assert q1.gap.min() > -0.01, q1.gap.min()

# %% [markdown]
# Spread over seeds for the headline: the fraction of seeds reaching the optimum at each
# (L1, lr) cell, summarised as mean ± std over the grid cells of the vanilla SAEs.

# %%
# NBVAL_CHECK_OUTPUT
per_seed = q1.groupby(["exp", "condition", "seed"], sort=False).reached.mean().reset_index()
print(sweep.mean_std(per_seed, ["exp", "condition"], ["reached"], digits=2))

# %% [markdown]
# **Finding (Q1).** The optimum, computed without any training, points along the composed x+y
# directions in exps 1 *and* 2 (MMCS 1.000 with the composed directions, ~0.72 with the true
# features) and along the true features only in exp 3, where one-hot samples make single features
# worth their own latents. So in exps 1-2 composition is what the reconstruction+L1 objective asks
# for; it is not a training failure. Vanilla SAEs reach that optimum in about half of the runs of
# the grid (0.58 / 0.55 / 0.52 of runs in exps 1 / 2 / 3, ± 0.07-0.08 over seeds); the heatmaps
# show the failures concentrated at the smallest learning rate (0-20% reach it there within the
# step budget) while at lr ≥ 1e-2 most seeds do. No trained SAE beats the independently computed
# optimum (min gap 0.000), as the lower-bound argument requires. With the orthogonality loss
# (λ = 0.01) no run reaches the reconstruction+L1 optimum: the decoders move 27-38° (median) away
# from it, towards the true features in exps 1-2 (MMCS with true features 0.93 vs 0.78-0.82), at a
# median objective cost of 30-42%; in exp 3 it costs 64% and gains nothing. The reason is specific
# to this toy: the trained toy model puts x1 and x2 (and y1, y2) antipodal, and an |cos|-based
# penalty treats antipodal rows as duplicates (|cos| = 1), so it cannot represent this toy's true
# features either.

# %% [markdown]
# ## Q2 · Does a higher embedding dimension help?
#
# The same structure, n_sets mutually exclusive sets of set_size features (one feature per set is
# active in every sample), embedded in d dims with a random orthogonal embedding when d ≥ F (else
# random unit directions, i.e. superposition). Amplitudes shared (exp. 1-like) or independent
# (exp. 2-like). SAEs have as many latents as true features. A run *recovers the true features*
# when its Hungarian MCC with them is ≥ 0.9; for the 2x2 structure with shared amplitudes the
# objective's optimum is the 4 composed directions, and we also count runs whose MCC with them
# is ≥ 0.9.

# %%
q2_rows = []
amps = ["shared", "uniform"]
for (n_sets, set_size), d in tqdm(
    [(s, d) for s in q2_structures for d in q2_dims], desc="Q2 settings"
):
    F = n_sets * set_size
    datasets = {
        a: toy.ToyData(toy.ToyDataConfig(
            F, d, embedding="orthogonal" if d >= F else "random", structure="exclusive_sets",
            set_size=set_size, amplitude=a,
        ), generator=torch.Generator().manual_seed(seed + d))
        for a in amps
    }
    rows = sweep.grid(n_seeds, amplitude=amps, ortho_weight=list(conditions))
    per_model = [datasets[a] for a in rows.amplitude]
    sae = sweep.train_stack(
        rows, per_model, d=d, n_latents=F, steps=steps,
        batch_size=batch_size, l1=q2_l1, ortho=ORTHO, seed=seed + d, device=device,
    )
    true = datasets["shared"].directions  # same embedding for both amplitude models
    composed = toy.composed_directions(true, set_size) if n_sets * set_size == 4 else None
    gt = sweep.ground_truth_scores(sae, true, composed=composed)
    X = sweep.eval_inputs(per_model, n_eval, EVAL_SEED)
    ev = sweep.evaluate_stack(sae, X, q2_l1)
    q2_rows.append(pd.concat([rows.assign(structure=f"{n_sets}x{set_size}", d=d), gt, ev], axis=1))
q2 = pd.concat(q2_rows, ignore_index=True)
q2["condition"] = q2.ortho_weight.map(conditions)
q2["recovered"] = q2.mcc >= 0.9

# %%
panels = {}
for amp in amps:
    for cond in conditions.values():
        panels[f"{amp} amplitudes, {cond}"] = {
            s: sweep.seeds_matrix(q2, "d", "mcc", {"structure": s, "amplitude": amp, "condition": cond})[1]
            for s in q2.structure.unique()
        }
fig = plotting.grid_of_lines(
    q2_dims, panels, xlabel="embedding dimension d", ylabel="MCC with true features", logx=True,
    suptitle="Q2: recovery of true features vs embedding dimension (mean ± std over seeds)",
)
plotting.save_figure(fig, "01_q2_dimension")

# %%
# NBVAL_CHECK_OUTPUT
q2_table = q2.groupby(["structure", "amplitude", "condition", "d"], sort=False).agg(
    recovered=("recovered", "mean"), mcc=("mcc", "mean"), mcc_std=("mcc", "std"),
    compositions=("n_compositions", "mean"), l0=("l0", "mean"), fvu=("fvu", "mean"),
).round(2)
print(q2_table.to_string())
sub = q2[(q2.structure == "2x2") & (q2.amplitude == "shared")]
print("\n2x2 shared amplitudes, fraction of runs whose decoder matches the composed optimum (MCC ≥ 0.9):")
print(sub.assign(at_composed=sub.mcc_composed >= 0.9).groupby(["condition", "d"], sort=False).at_composed.mean().round(2).to_string())

# %% [markdown]
# **Finding (Q2).** A higher embedding dimension does not make the optimum easier to reach: in the
# 2x2 shared-amplitude case the fraction of vanilla runs that land on the composed optimum *falls*
# with d (1.0 at d = 2 and 8, 0.6 at 32, 0.4 at 128), so the "too few parameters in 2-D" hypothesis
# is not supported. With shared amplitudes the true features are not recovered at d ≥ 8 for 2x2 and
# 3x3 (MCC 0.56-0.82, 0.8-5.6 composition latents), because compositions are optimal; only the
# 4x4 structure at d ≥ 32 is recovered in some runs (0.2-0.8 of them).
# With independent amplitudes they are recovered once there is no superposition (d ≥ F: MCC
# 0.96-1.00 at d = 8-32 for 2x2 and d = 32 for 3x3 and 4x4), not when F > d (3x3 and 4x4 at d = 8).
# The trend is not monotonic: at d = 128, 2x2 recovery drops again (MCC 0.82 vanilla, 0.55 with the
# orthogonality loss; FVU 0.10-0.21, i.e. some feature is not reconstructed by any latent). The
# orthogonality loss helps in superposition (3x3 at d = 8: recovered in 0.6 of runs vs 0; 4x4 at
# d = 8: MCC 0.83 vs 0.76, 3.6 vs 6.2 composition latents) and hurts in the 2x2, d = 128 case.

# %% [markdown]
# ## Q3 · Rare features: learnt alone, inside combinations, or not at all?
#
# F features with Zipf (power-law) firing probabilities from 0.3 down to 0.003 (SAELens's
# `zipfian_firing_probabilities`), firing correlated in blocks of 4 through a Gaussian copula
# with ρ = q3_rho, amplitudes U[0,1), orthogonal embedding in d = F (so superposition plays no
# part: only co-occurrence can create combinations). SAEs with F latents. Each true feature is
# classified by the composition detector (`lib.metrics.detect_compositions`): *alone* if some
# latent's decoder row has cos ≥ 0.9 with it, *in combination* if it is only a part of latents
# that are non-negative combinations of 2-3 true features (NNLS fit cos ≥ 0.9), else *missed*.

# %%
q3_cfg = toy.ToyDataConfig(
    q3_features, q3_features, firing="zipf", p_max=0.3, p_min=0.003, structure="copula",
    rho=q3_rho, block_size=4,
)
q3_data = toy.ToyData(q3_cfg, generator=torch.Generator().manual_seed(seed))
q3_rows = sweep.grid(n_seeds, ortho_weight=list(conditions))
q3_sae = sweep.train_stack(
    q3_rows, [q3_data] * len(q3_rows), d=q3_features,
    n_latents=q3_features, steps=q3_steps, batch_size=batch_size, l1=q2_l1, ortho=ORTHO,
    seed=seed, device=device, progress=True,
)
q3 = pd.concat([q3_rows, sweep.ground_truth_scores(q3_sae, q3_data.directions)], axis=1)
q3["condition"] = q3.ortho_weight.map(conditions)
probs = q3_data.probs.numpy()
bins = np.quantile(probs, np.linspace(0, 1, 5))
bin_of = np.clip(np.digitize(probs, bins[1:-1]), 0, len(bins) - 2)
bin_labels = [f"{bins[i]:.3f}-{bins[i + 1]:.3f}" for i in range(len(bins) - 1)]
fractions = {}
for cond in conditions.values():
    status = np.array(list(q3[q3.condition == cond].status))  # [n_seeds, F]
    fractions[cond] = {
        s: np.array([(status[:, bin_of == b] == s).mean() for b in range(len(bin_labels))])
        for s in (metrics.ALONE, metrics.IN_COMBINATION, metrics.MISSED)
    }
fig = plotting.status_by_frequency(
    bin_labels, fractions, suptitle=f"Q3: what happens to each true feature, by firing probability (ρ={q3_rho})"
)
plotting.save_figure(fig, "01_q3_frequency")

# %%
# NBVAL_CHECK_OUTPUT
for cond, by_status in fractions.items():
    print(cond)
    print(pd.DataFrame(by_status, index=bin_labels).round(2).to_string())
print(sweep.mean_std(q3, ["condition"], ["alone", "in_combination", "missed", "n_compositions", "mcc"], digits=2))
# The claim of the finding below, checked on this run's numbers:
assert q3[q3.ortho_weight > 0].alone.mean() > q3[q3.ortho_weight == 0].alone.mean()

# %% [markdown]
# **Finding (Q3).** Rare features are the ones that end up inside combinations. For vanilla SAEs
# every feature with firing probability above ~0.008 is learnt alone, but in the rarest quartile
# (p = 0.003-0.005) only 0.59 are learnt alone, 0.39 exist only as a part of a composition latent and
# 0.02 are missed entirely; overall 0.88 ± 0.02 of features are learnt alone and 4.2 ± 1 latents are
# compositions. With the orthogonality loss 0.99 ± 0.01 of features are learnt alone, there are
# 0.2 ± 0.4 composition latents and the MCC rises from 0.92 to 1.00: at this scale the loss does what
# it was proposed for.

# %% [markdown]
# ## Q4 · Correlation strength x dictionary size
#
# F = q4_features features in d = F, each firing with probability 0.05, firing correlated in
# blocks of 4 with copula ρ ∈ q4_rhos, amplitudes U[0,1); dictionaries of q4_sizes latents.

# %%
q4_rows = []
q4_sets = {
    rho: toy.ToyData(toy.ToyDataConfig(
        q4_features, q4_features, p=0.05, structure="copula", rho=rho, block_size=4,
    ), generator=torch.Generator().manual_seed(seed))
    for rho in q4_rhos
}
for n_lat in tqdm(q4_sizes, desc="Q4 dictionary sizes"):
    rows = sweep.grid(n_seeds, rho=q4_rhos, ortho_weight=list(conditions))
    per_model = [q4_sets[r] for r in rows.rho]
    sae = sweep.train_stack(
        rows, per_model, d=q4_features, n_latents=n_lat,
        steps=steps, batch_size=batch_size, l1=q2_l1, ortho=ORTHO, seed=seed + n_lat, device=device,
    )
    gt = sweep.ground_truth_scores(sae, q4_sets[q4_rhos[0]].directions)
    X = sweep.eval_inputs(per_model, n_eval, EVAL_SEED)
    q4_rows.append(pd.concat([rows.assign(n_latents=n_lat), gt, sweep.evaluate_stack(sae, X, q2_l1)], axis=1))
q4 = pd.concat(q4_rows, ignore_index=True)
q4["condition"] = q4.ortho_weight.map(conditions)
panels = {
    f"{n} latents": {
        c: sweep.seeds_matrix(q4, "rho", "alone", {"n_latents": n, "condition": c})[1] for c in conditions.values()
    }
    for n in q4_sizes
}
fig = plotting.grid_of_lines(
    q4_rhos, panels, xlabel="copula correlation ρ", ylabel="fraction of features learnt alone",
    suptitle="Q4: correlation strength x dictionary size (mean ± std over seeds)",
)
plotting.save_figure(fig, "01_q4_correlation_size")

# %%
# NBVAL_CHECK_OUTPUT
print(q4.groupby(["n_latents", "condition", "rho"], sort=False).agg(
    alone=("alone", "mean"), alone_std=("alone", "std"), in_combination=("in_combination", "mean"),
    compositions=("n_compositions", "mean"), mcc=("mcc", "mean"), l0=("l0", "mean"), fvu=("fvu", "mean"),
).round(2).to_string())

# %% [markdown]
# **Finding (Q4).** Correlation creates combinations when the dictionary is too small: with 16
# latents for 32 features, uncorrelated data gives half the features learnt alone and no
# compositions (the other half are dropped), while at ρ ≥ 0.3 5-8 latents become compositions and
# only 0.19-0.29 of features are learnt alone; the orthogonality loss does not change this (a penalty
# cannot create latents that are not there). With exactly 32 latents every feature is learnt alone
# at every ρ in both conditions. With 64 latents every feature is also learnt alone, but vanilla SAEs
# spend 3-7 of the spare latents on compositions *as well*; the orthogonality loss removes them
# (0-0.4 composition latents) at the same FVU (0.01) and a lower L0 (1.55 vs 1.75).

# %% [markdown]
# ## Q6 · The limit: inputs spread over continuous directions
#
# x = a·u with u uniform on the unit sphere in d = q6_d dims and a ~ U[0,1): infinitely many
# "features". A one-hidden-layer ReLU SAE would need exactly one active latent per input for
# perfect sparsity, but a ReLU encoder's latent fires on a whole cap of directions, so nearby
# directions co-activate. We train SAEs of growing size at a fixed L1 coefficient.

# %%
q6_rows, sphere = [], toy.SphereData(q6_d)
for n_lat in tqdm(q6_sizes, desc="Q6 dictionary sizes"):
    rows = sweep.grid(n_seeds, ortho_weight=list(conditions))
    sae = sweep.train_stack(
        rows, [sphere] * len(rows), d=q6_d, n_latents=n_lat, steps=q6_steps, batch_size=q6_batch, l1=q6_l1,
        ortho=ORTHO, seed=seed + n_lat, device=device,
    )
    X = sweep.eval_inputs([sphere], n_eval, EVAL_SEED)[0]
    q6_rows.append(pd.concat([rows.assign(n_latents=n_lat), sweep.evaluate_stack(sae, X, q6_l1)], axis=1))
q6 = pd.concat(q6_rows, ignore_index=True)
q6["condition"] = q6.ortho_weight.map(conditions)
fig, axes = plotting.plt.subplots(1, 2, figsize=(10, 3.6))
for ax, col in zip(axes, ["l0", "fvu"]):
    plotting.lines_with_spread(
        q6_sizes, {c: sweep.seeds_matrix(q6, "n_latents", col, {"condition": c})[1] for c in conditions.values()},
        xlabel="dictionary size", ylabel=col.upper(), logx=True, ax=ax,
    )
fig.suptitle(f"Q6: continuous directions in d={q6_d}, λ={q6_l1} (mean ± std over seeds)")
fig.tight_layout()
plotting.save_figure(fig, "01_q6_continuous_l0")

# %%
# NBVAL_CHECK_OUTPUT
print(q6.groupby(["condition", "n_latents"], sort=False).agg(
    l0=("l0", "mean"), l0_std=("l0", "std"), fvu=("fvu", "mean"), dead=("dead", "mean"),
).round(2).to_string())

# %% [markdown]
# **Finding (Q6).** L0 does not fall towards 1 as the dictionary grows: it rises from 2.4 (4
# latents) to ~4 (16 latents) and then levels off at 3.5-4 up to 256 latents, while the
# reconstruction stays good (FVU 0.02-0.04) — several latents co-activate on every input because a
# ReLU latent fires on a whole cap of directions. The extra latents of the larger dictionaries are
# largely not used at all (10-38% dead). The orthogonality loss makes no difference here (L0 and FVU
# within one standard deviation). Perfect sparsity is out of reach for a one-layer ReLU encoder on
# continuous directions, whatever the dictionary size.

# %% [markdown]
# ## Q5 · With and without the orthogonality loss: summary
#
# Every experiment above was run in both conditions on the same data and seeds. The headline
# numbers side by side (mean ± std over seeds), then the finding.

# %%
# NBVAL_CHECK_OUTPUT
print("Q1 fraction of runs reaching the optimum, per experiment:")
print(q1.pivot_table(index="exp", columns="condition", values="reached").round(2).to_string())
print("\nQ2 MCC with true features (independent amplitudes, all d and structures):")
print(sweep.mean_std(q2[q2.amplitude == "uniform"], ["condition"], ["mcc", "n_compositions"], digits=2))
print("\nQ3 features alone / missed:")
print(sweep.mean_std(q3, ["condition"], ["alone", "missed"], digits=2))
print("\nQ4 features alone (all ρ and sizes):")
print(sweep.mean_std(q4, ["condition"], ["alone", "n_compositions", "fvu"], digits=2))

# %% [markdown]
# **Finding (Q5).** The orthogonality loss (nearest-neighbour |cos|, steep -log(1-|cos|), active
# latents, λ = 0.01) helps exactly where an SAE has spare capacity that it would otherwise spend on
# combinations: rare correlated features (Q3: 0.99 vs 0.88 learnt alone, no composition latents)
# and over-complete dictionaries (Q4, 64 latents: 0-0.4 vs 3-7 composition latents at equal FVU),
# and in superposition (Q2, d = 8). It cannot help an undersized dictionary (Q4, 16 latents), it
# does not change the continuous limit (Q6), and it works *against* the objective where
# compositions are the optimum or where true features are antipodal (Q1: no run reaches the
# reconstruction+L1 optimum; Q2 2x2 at d = 128: MCC 0.55 vs 0.82). Its weight was not tuned here:
# the ablation notebook sweeps it.
