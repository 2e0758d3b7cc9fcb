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
# Each runs on toy data with known ground truth (MCC, rare features learnt alone, composition
# latents by decoder geometry and by activation, and both objectives) with toy_seeds seeds, and on
# language-model activations (FVE, L0, CE loss recovered, nearest-neighbour |cos|) with n_seeds
# seeds. Every variant sees the same data stream and starts from the same initialisation for a
# given seed, so variants are compared with the proposal seed by seed: a mean paired difference
# with a bootstrap 95% interval, and a verdict ("better" / "worse") only where the interval
# excludes zero (`sae_ortho.analysis.stats`). Penalty shapes and reductions differ in effective strength (the
# slope of the penalty at the |cos| a dictionary has), so for those the weight is tuned per
# variant over a small grid and each is compared at its best weight with the proposal at its best.
# Two settings are built on purpose: duplicated decoder rows (ties at |cos| ≈ 1, where a
# flattening shape gives almost no gradient) and "blocking" latents (the failure mode of the study
# brief: a rarely-active latent aligned with a useful one).
#
# **Q12** The cost: the orthogonality benchmark's scaling table and figure, with which method to
# use at which size. A summary table of every choice closes the notebook
# (also written to `results/ablation_summary.md`), and the toy findings are written to
# `results/findings_04.md` for the README.

# %% tags=["parameters"]
seed: int = 0
threads: int = 2
device: str = "cpu"
n_seeds: int = 3  # language-model seeds per variant
toy_seeds: int = 10  # toy seeds per variant (the stacked trainer makes these cheap)
# Toy: Zipf-firing features correlated in blocks of 4 (notebook 01, Q3, at 48 instead of 64
# features so that the whole grid, with weights tuned, fits the CPU budget)
toy_features: int = 48
toy_rho: float = 0.7
toy_steps: int = 1500
construction_steps: int = 1000  # the constructed starts below (their effects show within these steps)
toy_batch: int = 256
toy_l1: float = 0.1
toy_weight: float = 0.01  # λ_orth of the proposal on toy data (notebook 01)
toy_eval: int = 8192  # evaluation samples (the activation-based detector needs rare co-occurrences)
weight_factors: list = [0.1, 0.3, 3.0, 10.0]  # λ sweep, as multiples of the proposal's λ
tune_factors: list = [0.3, 3.0, 10.0]  # the weight grid (x each variant's λ, and 1) for shapes and reductions
size_factors: list = [0.5, 2.0]  # dictionary sizes, as multiples of the default size
toy_k: int = 4  # TopK k (the data's mean L0 is ~1.3; k must leave room for co-occurrence)
block_weight: float = 0.1  # λ_orth of the blocking demonstration
# Language model (notebook 02's defaults, so its activation cache and its SAEs are reused)
model: str = "EleutherAI/pythia-70m-deduped"
layer: int = 3
other_layer: int = 1  # harvested with layer in notebook 02 (same cache)
context: int = 128
corpus: str = "python-docs"
train_tokens: int = 1_000_000
sae_tokens: int = 600_000
eval_tokens: int = 32_768
n_latents: int = 1024
batch_size: int = 256
lr: float = 1e-3
l1_coeff: float = 0.7
lm_weight: float = 10.0  # λ_orth of the proposal on LM activations (notebook 02's ortho_weight)
lm_k: int = 32  # notebook 02's topk_k
# LM variants beyond notebook 02's three SAEs (vanilla, proposal, TopK vanilla), each n_seeds times;
# at paper scale pass e.g. '["mean |cos| over all", "all latents", "shape linear", "λ × 10", "TopK proposal"]'
lm_extra_variants: list = ["mean |cos| over all"]
ce_tokens: int = 4096

# %%
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from sae_ortho import metrics
from sae_ortho.analysis import objective, stats
from sae_ortho.bench import bench_ortho
from sae_ortho.core import paths
from sae_ortho.core.reproducibility import setup
from sae_ortho.data import constructions, lm_data, toy
from sae_ortho.experiments import ablations, runs, store, sweep
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import OrthoConfig
from sae_ortho.reporting import plotting, report

PARAMS = store.params(globals())  # the key of this notebook's stored SAEs (sae_ortho.experiments.store)
setup(seed, threads)
pd.set_option("display.width", 200)
pd.set_option("display.precision", 3)  # checked tables print at a resolution above other CPUs' rounding
pd.set_option("display.max_colwidth", 40)
EVAL_SEED = seed + 10_000
FINDINGS: dict[str, str] = {}  # formatted from this run's tables, written to results/findings_04.md
# the toy metrics compared, and which direction is better
HIGHER = {"mcc": True, "rare_alone": True, "alone": True, "n_compositions": False, "n_compositions_act": False,
          "fvu": False, "l0": False, "objective_vanilla": False, "near_duplicates": False}
TOY_COLS = ["mcc", "rare_alone", "n_compositions", "n_compositions_act", "fvu", "l0", "objective_vanilla"]


def bars(df: pd.DataFrame, cols: dict[str, str], title: str):
    """One bar per variant (mean ± std over seeds) for each column in ``cols``."""
    g = df.groupby(["group", "variant"], sort=False)
    mean, std = g[list(cols)].mean(), g[list(cols)].std(ddof=0)
    return plotting.variant_bars(
        [v for _, v in mean.index], {label: (mean[c].to_numpy(), std[c].to_numpy()) for c, label in cols.items()},
        groups=[gr for gr, _ in mean.index], suptitle=title,
    )


def forest(cmp: pd.DataFrame, metrics_: dict[str, str], title: str):
    """Paired differences from the reference (one row per variant) with 95% intervals, one panel per metric."""
    fig, axes = plotting.plt.subplots(1, len(metrics_), figsize=(4.2 * len(metrics_) + 2, 0.3 * cmp.variant.nunique() + 1.6),
                                      squeeze=False, sharey=True)
    for ax, (m, label) in zip(axes[0], metrics_.items()):
        c = cmp[cmp.metric == m]
        plotting.intervals(list(c.variant), c["diff"], c["low"], c["high"], xlabel=f"Δ {label}", groups=list(c.group),
                           ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fmt(r, digits: int = 3) -> str:
    """The paired difference and its interval: 3 decimals in the findings, 2 in checked cells (above
    the rounding noise of another CPU)."""
    return stats.fmt(r["diff"], r["low"], r["high"], digits, signed=True)


# %% [markdown]
# ## Q11 · Every choice on toy data
#
# F features with Zipf firing probabilities 0.3 → 0.003, firing correlated in blocks of 4
# (Gaussian copula, ρ = toy_rho), amplitudes U[0,1), orthogonal embedding (only co-occurrence can
# make combinations); F latents unless the variant sets the size. *Rare* = the quartile of
# features with the lowest firing probability. The proposal and every shape and reduction variant
# are trained at λ × (tune_factors and 1); the proposal also at λ × weight_factors (the weight
# sweep). Vanilla SAEs and the proposal are also started at the ground truth (decoder rows at the
# true features): if those reach a lower vanilla objective than vanilla SAEs from a random start,
# the vanilla SAEs' compositions are where optimisation stopped, not the objective's optimum.

# %%
toy_data = toy.ToyData(toy.zipf_copula_config(toy_features, toy_rho), generator=torch.Generator().manual_seed(seed),
                       fast_sampler=True)
probs = toy_data.probs.numpy()
rare = probs <= np.quantile(probs, 0.25)
x_toy, c_toy = (t[0] for t in sweep.eval_batches([toy_data], toy_eval, EVAL_SEED))
base_variants = ablations.standard_variants(toy_weight, weight_factors, toy_features, size_factors, k=toy_k)
TUNED = [v.name for v in base_variants if v.group in ("shape", "reduction")]
variants = ablations.with_tuning(base_variants, tune_factors, tune=TUNED)
toy_kw = {"true": toy_data.directions, "rare": rare, "coeffs": c_toy, "steps": toy_steps, "batch_size": toy_batch,
          "l1": toy_l1, "seed": seed, "device": device, "reference_penalty": (toy_weight, OrthoConfig())}
toy_df, toy_stacks = ablations.run_variants(variants, [toy_data] * toy_seeds, toy_features, toy_features, toy_seeds,
                                            x_toy, desc="toy variants", store="04/toy",
                                            key=PARAMS, **toy_kw)
gt_df, _ = ablations.run_variants(
    [ablations.Variant("vanilla, from ground truth", "start"),
     ablations.Variant("proposal, from ground truth", "start", toy_weight, OrthoConfig())],
    [toy_data] * toy_seeds, toy_features, toy_features, toy_seeds, x_toy, desc="from the ground truth",
    store="04/gt", key=PARAMS,
    init=lambda s: constructions.ground_truth_start(s, toy_data.directions), **toy_kw,
)
plain = pd.concat([toy_df[toy_df.weight_factor == 1.0], gt_df], ignore_index=True)  # every variant at its base λ
best = ablations.best_weight(toy_df[toy_df.variant.isin(["proposal", *TUNED])], "mcc")  # best λ by MCC
cmp_plain = ablations.comparison(plain, TOY_COLS, HIGHER)
cmp_best = ablations.comparison(best, TOY_COLS, HIGHER)
weights = ablations.weight_rows(toy_df)
cmp_weight = ablations.comparison(pd.concat([weights, toy_df[toy_df.variant == "vanilla"]]), TOY_COLS, HIGHER,
                                  reference="λ × 1")
cmp_obj = ablations.comparison(pd.concat([plain, best.assign(variant=best.variant + ", best λ")]),
                               ["objective_vanilla"], HIGHER, reference="vanilla")
groups = dict(zip(plain.variant, plain.group)) | {f"{v}, best λ": g for v, g in zip(best.variant, best.group)}
for c in (cmp_plain, cmp_best, cmp_weight, cmp_obj):
    c["group"] = c.variant.map(groups).fillna("weight")
one_at_a_time = cmp_plain[~cmp_plain.variant.isin(TUNED)]
shown = pd.concat([one_at_a_time[one_at_a_time.variant != "proposal"],
                   cmp_best[cmp_best.variant != "proposal"].assign(variant=lambda d: d.variant + " (best λ)")])
fig = forest(shown, {"mcc": "MCC", "rare_alone": "rare features alone", "n_compositions": "composition latents",
                     "fvu": "FVU"},
             f"Q11 toy: each variant − the proposal (paired by seed, 95% intervals; {toy_seeds} seeds); shapes and "
             "reductions at their best λ against the proposal at its best")
plotting.save_figure(fig, "04_q11_toy_variants")

# %%
# NBVAL_CHECK_OUTPUT
print("Every variant at its base λ, against the proposal (mean, Δ = paired difference [95% interval]):")
print(cmp_plain.pivot_table(index=["group", "variant"], columns="metric", values="text", aggfunc="first", sort=False)
      [TOY_COLS].to_string())
print("\nShapes and reductions at their best λ (chosen by mean MCC), against the proposal at its best λ:")
print(cmp_best.pivot_table(index="variant", columns="metric", values="text", aggfunc="first", sort=False)[TOY_COLS]
      .to_string())
print("best λ factor:", best.groupby("variant", sort=False).weight_factor.first().to_dict())
print("\nThe weight sweep of the proposal, against λ × 1:")
print(cmp_weight.pivot_table(index="variant", columns="metric", values="text", aggfunc="first", sort=False)[TOY_COLS]
      .to_string())
print("\nThe vanilla objective (reconstruction + L1) of every variant, against vanilla SAEs:")
print(cmp_obj[["variant", "text", "verdict"]].to_string(index=False))
print(f"\nGeometric and activation-based detectors classify {plain.detector_agree.mean():.3f} of latents alike "
      f"(mean over every SAE above); composition latents both call: {plain.compositions_both.mean():.2f} per SAE")

# %%
cp = {(x.variant, x.metric): x for _, x in cmp_plain.iterrows()}
cb = {(x.variant, x.metric): x for _, x in cmp_best.iterrows()}
cw = {(x.variant, x.metric): x for _, x in cmp_weight.iterrows()}
co = {x.variant: x for _, x in cmp_obj.iterrows()}
bf = best.groupby("variant", sort=False).weight_factor.first()
gt_v = co["vanilla, from ground truth"]
attr = objective.attribution(gt_v["low"], gt_v["high"])
size_names = [v.name for v in variants if v.group == "size"]
big_v, big_p = (n for n in size_names if n.startswith(f"latents × {max(size_factors):g}"))
small_p = next(n for n in size_names if n.startswith(f"latents × {min(size_factors):g}") and n.endswith("proposal"))
big_cmp = ablations.comparison(plain[plain.variant.isin([big_v, big_p])], ["rare_alone", "n_compositions", "mcc"],
                               HIGHER, reference=big_v)
bc = {x.metric: x for _, x in big_cmp[big_cmp.variant == big_p].iterrows()}
# one-at-a-time changes at the proposal's λ, and tuned variants at their best λ
candidates = {**{k: x for k, x in cp.items() if k[0] not in TUNED},
              **{(f"{k[0]} (best λ)", k[1]): x for k, x in cb.items() if k[0] != "proposal"}}
NAMES = {"mcc": "MCC", "rare_alone": "rare features alone", "n_compositions": "composition latents"}
worse: dict[str, list[str]] = {}
for (v, m), x in candidates.items():
    if x.verdict == stats.WORSE and m in NAMES and "vanilla" not in v and not v.startswith("latents") and "ground" not in v:
        worse.setdefault(v, []).append(NAMES[m])
top = max(tune_factors)
edge = [v for v in TUNED if bf[v] == top]
best_w = max(((f, cw[f"λ × {f:g}", "mcc"]["mean"]) for f in sorted(set(weights.weight_factor))), key=lambda t: t[1])
shapes_b = [v for v in TUNED if v.startswith("shape")]
text = [(f"**Toy data** ({toy_features} correlated Zipf features, λ = {toy_weight:g}, {toy_seeds} seeds; Δ = paired "
         "difference from the proposal with its 95% interval):")]
text.append(f"**Nearest neighbour vs mean |cos| over all.** At λ = {toy_weight:g} the mean over all latents changes MCC by "
            f"{fmt(cp['mean |cos| over all', 'mcc'])} and composition latents by {fmt(cp['mean |cos| over all', 'n_compositions'])}; "
            f"at its best λ (× {bf['mean |cos| over all']:g}) against the proposal at its best (× {bf['proposal']:g}): MCC "
            f"{fmt(cb['mean |cos| over all', 'mcc'])} ({cb['mean |cos| over all', 'mcc'].verdict}). No penalty at all: MCC "
            f"{fmt(cp['vanilla', 'mcc'])}, composition latents {fmt(cp['vanilla', 'n_compositions'])}.")
text.append("**Shape, each at its best λ** (× " + ", ".join(f"{bf[v]:g} for {v[6:]}" for v in shapes_b) +
            f"; the proposal × {bf['proposal']:g}): MCC " + ", ".join(
                f"{v[6:]} {fmt(cb[v, 'mcc'])} ({cb[v, 'mcc'].verdict})" for v in shapes_b) + "; at the common λ: " + ", ".join(
                f"{v[6:]} {fmt(cp[v, 'mcc'])}" for v in shapes_b) + (
                f". At the top of the weight grid (× {top:g}) for: {', '.join(edge)}, so their best may lie beyond it"
                if edge else "") + ". The duplicated-rows construction below shows where the shapes differ most.")
text.append(f"**Ties, scope, target** (one at a time, at λ = {toy_weight:g}): MCC one tied neighbour "
            f"{fmt(cp['one tied neighbour', 'mcc'])} ({cp['one tied neighbour', 'mcc'].verdict}), neighbours frozen "
            f"{fmt(cp['neighbours frozen', 'mcc'])} ({cp['neighbours frozen', 'mcc'].verdict}), all latents "
            f"{fmt(cp['all latents', 'mcc'])} ({cp['all latents', 'mcc'].verdict}), encoder rows "
            f"{fmt(cp['encoder rows', 'mcc'])} ({cp['encoder rows', 'mcc'].verdict}).")
text.append(f"**Weight.** Over λ × {', '.join(f'{f:g}' for f in sorted(set(weights.weight_factor)))} the mean MCC is highest at "
            f"λ × {best_w[0]:g} ({best_w[1]:.3f}; the proposal's λ gives {cw['λ × 1', 'mcc']['mean']:.3f}); "
            + ", ".join(f"λ × {f:g}: {fmt(cw[f'λ × {f:g}', 'mcc'])}" for f in sorted(set(weights.weight_factor)) if f != 1)
            + " (MCC against λ × 1).")
text.append(f"**Dictionary size.** With {min(size_factors):g}x the latents the proposal changes rare features alone by "
            f"{fmt(cp[small_p, 'rare_alone'])} relative to the proposal at full size. **{'Negative result' if bc['rare_alone'].verdict == stats.WORSE else 'Result'} at {max(size_factors):g}x "
            f"the latents:** against vanilla SAEs of the same size the proposal learns rare features alone "
            f"{fmt(bc['rare_alone'])} ({bc['rare_alone'].verdict}; vanilla {bc['rare_alone']['reference']:.2f}, proposal "
            f"{bc['rare_alone']['mean']:.2f}) with {fmt(bc['n_compositions'])} composition latents ({bc['n_compositions'].verdict}).")
text.append(f"**Base SAE.** TopK (k = {toy_k}) with the loss against TopK without: MCC "
            + fmt(ablations.comparison(plain[plain.variant.isin(['TopK vanilla', 'TopK proposal'])], ['mcc'], HIGHER,
                                       reference='TopK vanilla').iloc[-1]) + ".")
text.append(f"**Optimum or optimisation: {attr}.** On the vanilla objective (reconstruction + L1) vanilla SAEs started at "
            f"the ground truth score {fmt(gt_v)} relative to vanilla SAEs from a random start ({gt_v.verdict}), and the proposal "
            f"{fmt(co['proposal'])} ({co['proposal'].verdict}): {objective.explain(attr)}. The geometric and the "
            f"activation-based detector classify {plain.detector_agree.mean():.2f} of latents alike.")
text.append("**Worse than the proposal** (MCC, rare features alone or composition latents; intervals excluding zero): "
            + ("; ".join(f"{v} ({', '.join(ms)})" for v, ms in worse.items()) if worse else "none") + ".")
FINDINGS["toy"] = "\n".join(f"- {t}" if i else t for i, t in enumerate(text))
display(Markdown(FINDINGS["toy"]))

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
for i in range(toy_seeds):
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
print("Mean nearest-neighbour |cos| of vanilla SAEs' latents (mean [95% interval] over seeds):")
ed = stats.mean_ci(enc_dec, ["latent kind", "rows"], "nn_abs_cos")
print(ed.assign(ci=[stats.fmt_row(r, 2, "mean") for _, r in ed.iterrows()]).pivot_table(
    index="latent kind", columns="rows", values="ci", aggfunc="first").to_string())
ed_diff = stats.compare(enc_dec, "rows", "decoder", "nn_abs_cos", pair_on=("seed",), by=["latent kind"])
ed_diff = ed_diff[ed_diff.rows == "encoder"]
print("encoder − decoder:", {r["latent kind"]: fmt(r, 2) for _, r in ed_diff.iterrows()})

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
                       generator=torch.Generator().manual_seed(seed), fast_sampler=True)
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
    ablations.Variant("proposal", "reference", toy_weight, OrthoConfig()),
    ablations.Variant("encoder rows", "target", toy_weight, OrthoConfig(target="encoder")),
]
enc_df, _ = ablations.run_variants(
    enc_variants, [enc_data] * toy_seeds, 32, 32, toy_seeds, x_enc, true=enc_data.directions, steps=construction_steps,
    batch_size=toy_batch, l1=toy_l1, seed=seed, device=device, init=composed_start, extra=enc_dec_cos,
    desc="encoder vs decoder", store="04/enc", key=PARAMS,
)

# %%
# NBVAL_CHECK_OUTPUT
ENC_COLS = ["n_compositions", "mcc", "alone", "enc_nn_cos", "dec_nn_cos", "fvu"]
cmp_enc = ablations.comparison(enc_df, ENC_COLS, {"n_compositions": False, "mcc": True, "alone": True,
                                                  "enc_nn_cos": False, "dec_nn_cos": False, "fvu": False})
print(cmp_enc.pivot_table(index="variant", columns="metric", values="text", aggfunc="first", sort=False)[ENC_COLS]
      .to_string())

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


dup_f = 32
dup_data = toy.ToyData(toy.ToyDataConfig(dup_f, dup_f, p=0.1), generator=torch.Generator().manual_seed(seed),
                       fast_sampler=True)
x_dup = sweep.eval_inputs([dup_data], 4096, EVAL_SEED)[0]
dup_df, _ = ablations.run_variants(
    dup_variants, [dup_data] * toy_seeds, dup_f, 2 * dup_f, toy_seeds, x_dup, true=dup_data.directions,
    steps=construction_steps, batch_size=toy_batch, l1=toy_l1, seed=seed, device=device, init=duplicated,
    desc="duplicated rows", store="04/dup", key=PARAMS,
)
DUP_COLS = ["near_duplicates", "mcc", "alone", "fvu"]
cmp_dup = ablations.comparison(dup_df, DUP_COLS, HIGHER)
cmp_dup["group"] = cmp_dup.variant.map(dict(zip(dup_df.variant, dup_df.group)))
fig = forest(cmp_dup[cmp_dup.variant != "proposal"], {"near_duplicates": "near-duplicate latents", "mcc": "MCC",
                                                      "fvu": "FVU"},
             f"Q11: start from duplicated rows, λ={toy_weight:g}: each variant − the proposal (paired, {toy_seeds} seeds)")
plotting.save_figure(fig, "04_q11_duplicates")

# %%
# NBVAL_CHECK_OUTPUT
print(cmp_dup.pivot_table(index="variant", columns="metric", values="text", aggfunc="first", sort=False)[DUP_COLS]
      .to_string())

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
blk_data = toy.ToyData(toy.ToyDataConfig(32, 32, p=0.1), generator=torch.Generator().manual_seed(seed),
                       fast_sampler=True)
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
    blk_variants, [blk_data] * toy_seeds, 32, 40, toy_seeds, x_blk, steps=construction_steps, batch_size=toy_batch,
    l1=toy_l1, seed=seed, device=device, init=with_blockers, extra=blocked_scores, desc="blocking",
    store="04/blk", key=PARAMS,
)

# %%
# NBVAL_CHECK_OUTPUT
BLK_COLS = ["blocked_learnt", "blocked_best_cos", "blocker_cos", "fvu"]
blk = stats.mean_ci(blk_df, ["variant"], BLK_COLS)
print(blk.assign(ci=[stats.fmt_row(r, 2, "mean") for _, r in blk.iterrows()]).pivot_table(
    index="variant", columns="metric", values="ci", aggfunc="first", sort=False)[BLK_COLS].to_string())
cmp_blk = pd.concat([
    ablations.comparison(blk_df[blk_df.variant.str.endswith(f"λ={w:g}")], BLK_COLS,
                         {"blocked_learnt": True, "blocked_best_cos": True, "blocker_cos": False, "fvu": False},
                         reference=f"active + neighbour grad (proposal) λ={w:g}")
    for w in (toy_weight, block_weight)
])
print("\nAgainst the proposal at the same λ (paired by seed):")
print(cmp_blk.pivot_table(index="variant", columns="metric", values="text", aggfunc="first", sort=False)[BLK_COLS]
      .to_string())

# %%
cd = {(x.variant, x.metric): x for _, x in cmp_dup.iterrows()}
ce = {(x.variant, x.metric): x for _, x in cmp_enc.iterrows()}
bk = {(x.variant, x.metric): x for _, x in blk.iterrows()}
frozen, prop = f"active, neighbours frozen λ={block_weight:g}", f"active + neighbour grad (proposal) λ={block_weight:g}"
edd = {r["latent kind"]: r for _, r in ed_diff.iterrows()}
dup_line = (f"- **Duplicated rows** (20 groups of 3): near-duplicates left: proposal "
            f"{cd['proposal', 'near_duplicates']['mean']:.1f}, vanilla {cd['vanilla', 'near_duplicates']['mean']:.1f}; "
            + ", ".join(f"{v} {fmt(cd[v, 'near_duplicates'])} ({cd[v, 'near_duplicates'].verdict})" for v in
                        ["one tied neighbour", "shape linear", "shape square", "shape sigmoid", "shape c2_over_1mc"])
            + f"; MCC of c²/(1−c) {fmt(cd['shape c2_over_1mc', 'mcc'])}.")
blk_line = (f"- **Blocking** (8 blockers at cos 0.99, λ = {block_weight:g}): blocked features learnt with neighbours frozen "
            f"{stats.fmt_row(bk[frozen, 'blocked_learnt'], 2, 'mean')}, with the neighbour gradient "
            f"{stats.fmt_row(bk[prop, 'blocked_learnt'], 2, 'mean')}, all latents "
            f"{stats.fmt_row(bk[f'all latents λ={block_weight:g}', 'blocked_learnt'], 2, 'mean')}; at λ = {toy_weight:g}: "
            f"frozen {stats.fmt_row(bk[f'active, neighbours frozen λ={toy_weight:g}', 'blocked_learnt'], 2, 'mean')}.")
enc_line = ("- **Encoder vs decoder rows.** In trained vanilla SAEs, encoder − decoder nearest-neighbour |cos| is "
            + ", ".join(f"{fmt(v)} for {k} latents" for k, v in edd.items())
            + ". From the constructed start (orthogonal encoder, composed decoder) the encoder penalty ends with decoder "
            f"|cos| {fmt(ce['encoder rows', 'dec_nn_cos'])} and composition latents "
            f"{fmt(ce['encoder rows', 'n_compositions'])} relative to the proposal; vanilla: "
            f"{fmt(ce['vanilla', 'n_compositions'])} composition latents.")
FINDINGS["constructions"] = (f"**Constructions** (each variant − the proposal, paired by seed):\n{dup_line}\n{blk_line}"
                             f"\n{enc_line}")
display(Markdown(FINDINGS["constructions"]))

# %% [markdown]
# ## Q11 · The same choices on language-model activations
#
# Notebook 02's converged SAEs (n_latents latents, sae_tokens activations each, the LM recipe) are
# the vanilla, proposal and TopK rows here (the same runs, reused from the store `results/saes/lm/`); each variant
# in lm_extra_variants is trained with the same recipe and seeds. λ_orth is on the LM scale (inputs
# normalised to mean squared norm d). CE loss recovered is measured for the first seed of each
# variant on ce_tokens held-out tokens. Every SAE's convergence gates are printed with it.

# %%
data = lm_data.prepare(lm_data.LMDataConfig(
    model=model, layers=(layer, other_layer), context=context, train_tokens=train_tokens, eval_tokens=eval_tokens,
    corpus=corpus, device=device,
))
LABEL = data.lm.label
common = {"n_latents": n_latents, "tokens": sae_tokens, "batch_size": batch_size, "lr": lr}
shared_runs = {  # notebook 02's SAEs: the same specs, so the same runs
    "vanilla": runs.LMSAESpec("vanilla", l1_coeff=l1_coeff, **common),
    "proposal": runs.LMSAESpec("ortho", l1_coeff=l1_coeff, ortho_weight=lm_weight, ortho=OrthoConfig(), **common),
    "TopK vanilla": runs.LMSAESpec("topk", kind="topk", k=lm_k, **common),
}
everything = {v.name: v for v in ablations.standard_variants(lm_weight, weight_factors, n_latents, size_factors, k=lm_k)}
unknown = [name for name in lm_extra_variants if name not in everything]
if unknown:
    raise ValueError(f"lm_extra_variants: unknown {unknown}; choose from {list(everything)}")
lm_variants = [everything[name] for name in [*shared_runs, *lm_extra_variants]]
base = runs.LMSAESpec("04", l1_coeff=l1_coeff, **common)
lm_df, lm_ce = ablations.run_lm_variants(
    lm_variants, data, layer, n_seeds, base, data.eval[layer].load(),
    ce_tokens=data.eval_tokens[: max(1, ce_tokens // context)].to(data.lm.device), seed=seed, device=device,
    shared=shared_runs,
)
lm_df["ce_recovered"] = lm_df.variant.map(lm_ce.ce_recovered).where(lm_df.seed == 0)
fig = bars(lm_df, {"fve": "fraction of variance explained", "l0": "L0", "nn_cos_mean": "mean NN |cos|",
                   "dead": "dead latents"},
           f"Q11 LM: {LABEL}, block {layer}, {n_latents} latents, λ={lm_weight:g} unless stated")
plotting.save_figure(fig, "04_q11_lm_variants")

# %%
# NBVAL_CHECK_OUTPUT
print(ablations.summary(lm_df, ["fve", "l0", "dead", "nn_cos_mean"], digits=3).to_string())
GATE_COLS = ["near-init fraction", "loss change, last 20%", "L0 change, last 20%", "dead change, last 20%", "gates_pass"]
print("\nConvergence gates per SAE:")
print(lm_df.set_index(["variant", "seed"])[GATE_COLS].round(3).to_string())
print(f"\nCE loss recovered (seed 0, {lm_ce.iloc[0].clean:.2f} nats clean, {lm_ce.iloc[0].zero:.2f} zero-ablated):")
print(lm_ce.ce_recovered.round(3).to_string())

# %% [markdown]
# ## Q12 · The cost of the penalty
#
# From the orthogonality benchmark (`python -m sae_ortho.bench.bench_ortho --scaling`, run on 2 CPU cores at
# d = 768, batch 1024; `results/ortho_scaling.csv`). Each method's training step time (amortised
# over cache refreshes) and peak memory against the dictionary size n, with the vanilla step for
# reference. The table gives the ratio to the vanilla step (the vanilla step timed in the same run:
# the methods were not all timed on the same machine) and the exactness of the chosen neighbours
# (agreement with the exact search).

# %%
# overhead: against the vanilla step timed beside it, or in the same run (methods were timed on different machines)
bench = bench_ortho.read_scaling().rename(columns={"overhead": "x_vanilla"})
plotting.save_figure(bench_ortho.scaling_figure(bench), "04_q12_cost")
print("Timed on:", "; ".join(f"{m}: {machine}" for m, machine in bench.groupby("method", sort=False).machine.first().items()))

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
# Each choice against the proposal: on toy data the mean with the paired difference from the
# proposal and its 95% interval (shapes and reductions at their best λ against the proposal at its
# best), on language-model activations the same with n_seeds seeds, and a verdict from each
# interval ("better" / "worse" only where it excludes zero). The recommendation follows from the
# verdicts.

# %%
# NBVAL_CHECK_OUTPUT
cmp_lm = ablations.comparison(lm_df, ["fve", "nn_cos_mean"], {"fve": True, "nn_cos_mean": False}, ci_digits=3)
toy_rows = {}
for c in (cmp_plain, cmp_weight[cmp_weight.variant != "vanilla"]):
    for _, x in c.iterrows():
        toy_rows.setdefault(x.variant, {})[x.metric] = x
for _, x in cmp_best.iterrows():  # tuned variants: compared at their best λ
    if x.variant != "proposal":
        toy_rows[x.variant][x.metric] = x.copy()
        toy_rows[x.variant][x.metric]["text"] = f"{x.text}, best λ × {bf[x.variant]:g}"
lm_rows = {}
for _, x in cmp_lm.iterrows():
    lm_rows.setdefault(x.variant, {})[x.metric] = x
order = [v for v in dict.fromkeys([*plain.variant, *weights.variant, *lm_df.variant]) if v != "λ × 1"]  # = proposal
group_of = dict(zip(pd.concat([plain, weights, lm_df]).variant, pd.concat([plain, weights, lm_df]).group))


def recommend(name: str, verdicts: tuple[str, str]) -> str:
    if name == "proposal":
        return "the reference"
    if "worse" in verdicts and "better" in verdicts:
        return "trade-off: better in one setting, worse in the other"
    if "worse" in verdicts:
        return "keep the proposal"
    if "better" in verdicts:
        return "prefer this"
    return "no detectable difference"


table = []
for v in order:
    t, lm = toy_rows.get(v, {}), lm_rows.get(v, {})
    tv = t["mcc"].verdict if "mcc" in t else "not run"
    lv = lm["fve"].verdict if "fve" in lm else "not run"
    table.append({
        "variant": v, "group": group_of[v],
        "toy MCC": t["mcc"].text if "mcc" in t else "not run",
        "toy compositions": t["n_compositions"].text if "n_compositions" in t else "not run",
        "toy vs proposal": tv,
        "LM FVE": lm["fve"].text if "fve" in lm else "not run",
        "LM NN |cos|": lm["nn_cos_mean"].text if "nn_cos_mean" in lm else "not run",
        "LM vs proposal": lv,
        "recommendation": recommend(v, (tv, lv)),
    })
table = pd.DataFrame(table).set_index("variant")
print(table.to_string())
summary_md = (
    "# Ablation summary (notebook 04)\n\n"
    f"Written by `notebooks/04_ablations.py` from its run: toy data ({toy_features} correlated features, "
    f"λ={toy_weight:g}, {toy_seeds} seeds) and {LABEL} block {layer} ({n_latents} latents, λ={lm_weight:g}, "
    f"{n_seeds} seeds). Each cell: the mean over seeds, and for every variant but the proposal (Δ the paired difference "
    "from the proposal, same seeds: same data and initialisation, with its bootstrap 95% interval). Shapes and "
    "reductions on toy data are compared at their best λ (by MCC) against the proposal at its best. A verdict is "
    "'better' or 'worse' only when the interval excludes zero, else 'no detectable difference' at this number of "
    "seeds (toy: MCC; LM: FVE). 'not run': the variant is not part of that setting.\n\n"
    # "|" inside a cell would end it in Markdown: escape it
    + table.rename(index=lambda x: x.replace("|", "\\|"), columns=lambda x: x.replace("|", "\\|")).to_markdown() + "\n"
)
out = report.write_result("ablation_summary.md", summary_md)
print(f"\nwritten to {out.relative_to(paths.OUTPUT_ROOT)}")

# %% [markdown]
# ## Findings on toy data
#
# Formatted from the tables above (also written to `results/findings_04.md`, from which the
# README's findings section is generated).

# %%
findings = (f"## Findings of the ablations on toy data (notebook 04: {toy_seeds} seeds; the per-choice table with "
            "intervals and verdicts, also for the language model, is "
            "[`results/ablation_summary.md`](results/ablation_summary.md))\n\n"
            + FINDINGS["toy"] + "\n\n" + FINDINGS["constructions"])  # written with the LM findings below

# %% [markdown]
# ## Findings on the language model and the cost
#
# Formatted from the tables above and appended to `results/findings_04.md`.

# %%
lm_cmp = ablations.comparison(lm_df, ["fve", "nn_cos_mean", "l0"], {"fve": True, "nn_cos_mean": False, "l0": False})
lm_cmp = lm_cmp.set_index(["variant", "metric"])
lm_ok = bool(lm_df.gates_pass.fillna(False).all())
failed_runs = [f"{v} s{s}" for v, s, ok in zip(lm_df.variant, lm_df.seed, lm_df.gates_pass) if not ok]
lm_means = lm_df.groupby("variant", sort=False)[["fve", "l0", "nn_cos_mean", "near-init fraction"]].mean()
lm_lines = [
    f"- **Language model ({LABEL}, block {layer}, {n_latents} latents, {sae_tokens:,} tokens per SAE, "
    f"{n_seeds} seeds).** " + ("Every SAE passes its convergence gates (near-init fraction at most "
                              f"{lm_means['near-init fraction'].max():.3f})." if lm_ok else
                              "**Inconclusive at this budget**: these SAEs fail a convergence gate: "
                              + ", ".join(failed_runs) + "."),
]
for v in lm_means.index:
    if v == "proposal":
        continue
    r_fve, r_cos = lm_cmp.loc[(v, "fve")], lm_cmp.loc[(v, "nn_cos_mean")]
    lm_lines.append(
        f"  - {v}: FVE {lm_means.loc[v, 'fve']:.3f} (Δ vs proposal {stats.fmt_row(r_fve, 3)}, {r_fve.verdict}), "
        f"L0 {lm_means.loc[v, 'l0']:.1f}, mean nearest-neighbour |cos| {lm_means.loc[v, 'nn_cos_mean']:.3f} "
        f"(Δ {stats.fmt_row(r_cos, 3)})")
lm_lines.append(f"  - proposal: FVE {lm_means.loc['proposal', 'fve']:.3f}, L0 {lm_means.loc['proposal', 'l0']:.1f}, "
                f"mean nearest-neighbour |cos| {lm_means.loc['proposal', 'nn_cos_mean']:.3f}")
cost = bench.pivot_table(index="n", columns="method", values="x_vanilla", sort=False)
agree = bench.pivot_table(index="n", columns="method", values="agreement", sort=False)
n_max = int(cost.index.max())
cost_line = (f"- **Cost (Q12, `results/ortho_scaling.csv`, d = 768).** Step time over a vanilla step at n = {n_max:,}: "
             + ", ".join(f"{m} {cost.loc[n_max, m]:.2f}x" for m in cost.columns if m != "vanilla"
                         and np.isfinite(cost.loc[n_max, m]))
             + "; neighbour agreement with the exact search there: "
             + ", ".join(f"{m} {agree.loc[n_max, m]:.2f}" for m in agree.columns if m != "vanilla"
                         and np.isfinite(agree.loc[n_max, m])) + ".")
lm_findings = "\n".join(lm_lines + [cost_line])
display(Markdown(lm_findings))
path = report.write_findings("04", findings + "\n\n" + lm_findings)
print(f"written to {path.relative_to(paths.OUTPUT_ROOT)}")
# the claims above, checked on this run's values
assert lm_ok == all(bool(x) for x in lm_df.gates_pass)
for v in lm_means.index:
    if v != "proposal":
        r = lm_cmp.loc[(v, "fve")]
        assert not np.isfinite(r.low) or r.low <= r["diff"] <= r.high
