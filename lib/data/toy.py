"""Toy data with ground-truth features.

Two pieces:

- :class:`ToyData`, a general generator: ``n_features`` directions embedded in ``d`` dims
  (random orthogonal, random unit, or given), per-feature firing probabilities (uniform or
  Zipfian power law), a correlation structure (independent, Gaussian-copula correlated firing in
  blocks, or mutually exclusive sets with one active feature per set) and an amplitude model
  (independent U[0,1), one U[0,1) shared by all active features of a sample, or constant).
  Firing with Zipf probabilities and copula correlation is delegated to SAELens's
  ``sae_lens.synthetic.ActivationGenerator`` (thresholded correlated Gaussians); the composed sets
  of Anders et al. and the amplitude models are what SAELens lacks and are written here.
- The Anders et al. (2024) composed-feature toy: four features in two mutually exclusive sets
  {x1, x2} and {y1, y2}, embedded in 2 dims by a trained ReLU-output toy model (Elhage et al.,
  "Toy Models of Superposition"). Experiments 1-3 are :func:`anders_data` with ``experiment=1..3``.

Every sample comes with its ground-truth coefficients, so metrics can compare SAEs with the truth.
Randomness comes from the global torch generator, seeded by :func:`sae_ortho.core.reproducibility.setup`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm import TqdmWarning

from sae_ortho.core.validation import (
    ParameterTypeError,
    check_bool,
    check_choice,
    check_default,
    check_float,
    check_instance,
    check_int,
    check_probability,
    check_tensor,
)


def _synthetic():
    """SAELens's synthetic-data module, imported on first use (most toy data never needs it, and
    importing sae_lens costs seconds)."""
    with warnings.catch_warnings():
        # sae_lens imports tqdm.auto, which warns in notebook kernels without ipywidgets
        warnings.simplefilter("ignore", TqdmWarning)
        import sae_lens.synthetic

    return sae_lens.synthetic


EMBEDDINGS = ("orthogonal", "random", "given")
FIRINGS = ("uniform", "zipf")
STRUCTURES = ("independent", "copula", "exclusive_sets")
AMPLITUDES = ("uniform", "shared", "constant")


class ToyBatch(NamedTuple):
    """x: [batch, d] inputs; coeffs: [batch, n_features] ground-truth feature coefficients."""

    x: Tensor
    coeffs: Tensor


def _check_positive_int(name: str, value: int) -> int:
    return check_int(name, value, 1)


@dataclass(frozen=True)
class ToyDataConfig:
    """Configuration of :class:`ToyData`; validated on construction.

    Attributes:
        n_features: number of ground-truth features F.
        d: embedding dimension.
        embedding: ``"orthogonal"`` (needs d >= F), ``"random"`` unit vectors, or ``"given"``
            (pass ``directions`` to :class:`ToyData`).
        firing: ``"uniform"`` (every feature fires with ``p``) or ``"zipf"`` (power law from
            ``p_max`` down to ``p_min`` with ``zipf_exponent``). Not used by ``exclusive_sets``.
        p, p_max, p_min, zipf_exponent: firing-probability parameters.
        structure: ``"independent"``, ``"copula"`` (firing indicators are thresholded Gaussians
            with correlation ``rho`` inside consecutive blocks of ``block_size`` features), or
            ``"exclusive_sets"`` (F = n_sets * set_size; each sample activates, per set, one
            uniformly chosen feature with probability ``p_set``).
        amplitude: ``"uniform"`` U[0,1) per active feature, ``"shared"`` one U[0,1) per sample,
            or ``"constant"`` 1.
        p_single: probability that a sample is instead a single one-hot feature (chosen
            uniformly) with a U[0,1) amplitude (Anders et al. experiment 3).

    A parameter that the chosen options do not use (``rho`` without ``structure="copula"``, ``p``
    with Zipf firing, ...) must keep its default: a ValueError says so instead of ignoring it.
    """

    n_features: int
    d: int
    embedding: str = "orthogonal"
    firing: str = "uniform"
    p: float = 0.05
    p_max: float = 0.3
    p_min: float = 0.003
    zipf_exponent: float = 1.0
    structure: str = "independent"
    rho: float = 0.0
    block_size: int = 2
    set_size: int = 2
    p_set: float = 1.0
    amplitude: str = "uniform"
    p_single: float = 0.0

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        for name in ("n_features", "d", "block_size", "set_size"):
            put(name, check_int(name, getattr(self, name), 1))
        for name, allowed in (
            ("embedding", EMBEDDINGS),
            ("firing", FIRINGS),
            ("structure", STRUCTURES),
            ("amplitude", AMPLITUDES),
        ):
            check_choice(name, getattr(self, name), allowed)
        for name in ("p", "p_max", "p_min", "p_set", "p_single"):
            put(name, check_probability(name, getattr(self, name)))
        put("zipf_exponent", check_float("zipf_exponent", self.zipf_exponent, 0.0, low_open=True))
        put("rho", check_float("rho", self.rho, 0.0, 1.0, high_open=True))
        if self.firing == "zipf" and not 0 < self.p_min < self.p_max:
            raise ValueError(f"zipf firing needs 0 < p_min < p_max, got {self.p_min}, {self.p_max}")
        if self.embedding == "orthogonal" and self.d < self.n_features:
            raise ValueError(
                f"embedding='orthogonal' needs d >= n_features, got d={self.d} < {self.n_features}; "
                "use embedding='random' for superposition"
            )
        if self.structure == "exclusive_sets" and self.n_features % self.set_size:
            raise ValueError(
                f"n_features={self.n_features} must be a multiple of set_size={self.set_size}"
            )
        self._check_unused()

    def _check_unused(self) -> None:
        """A parameter the chosen options ignore must keep its default: setting it would
        otherwise be silently without effect (e.g. ``rho`` without ``structure="copula"``)."""
        used = {"copula": ("rho", "block_size"), "exclusive_sets": ("set_size", "p_set")}
        for structure, names in used.items():
            if self.structure != structure:
                for name in names:
                    self._refuse_if_set(name, f"structure={self.structure!r}", f"structure={structure!r}")
        if self.structure == "exclusive_sets":  # each set fires with p_set: no firing model
            for name in ("firing", "p", "p_max", "p_min", "zipf_exponent"):
                self._refuse_if_set(name, "structure='exclusive_sets'", "p_set")
        elif self.firing == "uniform":
            for name in ("p_max", "p_min", "zipf_exponent"):
                self._refuse_if_set(name, "firing='uniform'", "firing='zipf'")
        else:
            self._refuse_if_set("p", "firing='zipf'", "p_max and p_min")
        if self.structure == "copula" and self.block_size == 1:  # blocks of one feature: no pairs to correlate
            self._refuse_if_set("rho", "block_size=1 (each block holds one feature)", "block_size >= 2")

    def _refuse_if_set(self, name: str, context: str, instead: str) -> None:
        default = next(f.default for f in dataclasses.fields(self) if f.name == name)
        check_default(name, getattr(self, name), default, context, instead)

    @property
    def n_sets(self) -> int:
        return self.n_features // self.set_size

    def firing_probabilities(self) -> Tensor:
        """[n_features] marginal firing probability of each feature (before ``p_single``)."""
        f = self.n_features
        if self.structure == "exclusive_sets":
            return torch.full((f,), self.p_set / self.set_size)
        if self.firing == "zipf":
            if f == 1:
                return torch.tensor([self.p_max])
            return _synthetic().zipfian_firing_probabilities(f, self.zipf_exponent, self.p_max, self.p_min)
        return torch.full((f,), float(self.p))

    def correlation_matrix(self) -> Tensor | None:
        """[F, F] copula correlation (block structure) or None when firing is independent."""
        if self.structure != "copula" or self.rho == 0:
            return None
        block = torch.arange(self.n_features) // self.block_size
        same = (block[:, None] == block[None, :]).float()
        return torch.eye(self.n_features) + self.rho * (same - torch.eye(self.n_features))


def random_directions(n: int, d: int, orthogonal: bool, generator: torch.Generator | None = None) -> Tensor:
    """[n, d] unit rows: random orthonormal (needs d >= n) or independent random unit vectors."""
    n, d = check_int("n", n, 1), check_int("d", d, 1)
    if check_bool("orthogonal", orthogonal) and d < n:
        raise ValueError(f"orthogonal directions need d >= n, got d={d} < n={n}")
    g = torch.randn(d, n, generator=generator)
    if orthogonal:
        q, r = torch.linalg.qr(g)
        return (q * torch.sign(torch.diagonal(r))).T.contiguous()
    return (g / g.norm(dim=0, keepdim=True)).T.contiguous()


class ToyData:
    """Sample toy inputs with their ground-truth coefficients.

    Args:
        cfg: the configuration.
        directions: [n_features, d] feature directions, required iff ``cfg.embedding == "given"``.
        generator: generator for the random embedding (data sampling uses the global generator).
        fast_sampler: sample firing without SAELens's generator: the copula's correlated
            Gaussians as one matrix product ``eps @ L^T`` (L the Cholesky factor of the correlation
            matrix; SAELens does one matrix-vector product per sample, from the same random draws)
            and independent firing as ``U[0,1) < p`` (SAELens: Bernoulli draws, then index lists).
            The same distributions, several times faster for stacks, but a different random stream
            (and, for the copula, different last bits), so off by default: existing results stay
            bit-identical. Mutually exclusive sets are sampled here either way.
    """

    def __init__(
        self,
        cfg: ToyDataConfig,
        directions: Tensor | None = None,
        generator: torch.Generator | None = None,
        fast_sampler: bool = False,
    ):
        check_instance("cfg", cfg, ToyDataConfig)
        check_instance("generator", generator, torch.Generator, optional=True)
        fast_sampler = check_bool("fast_sampler", fast_sampler)
        self.cfg = cfg
        if cfg.embedding == "given":
            if directions is not None:
                directions = check_tensor("directions", directions, finite=False, arrays=True)
            if directions is None or tuple(directions.shape) != (cfg.n_features, cfg.d):
                raise ValueError(
                    f"embedding='given' needs directions of shape ({cfg.n_features}, {cfg.d}), "
                    f"got {None if directions is None else tuple(directions.shape)}"
                )
            if not torch.isfinite(directions).all():
                raise ValueError("directions contain non-finite values")
            self.directions = directions.detach().float().clone()
        else:
            if directions is not None:
                raise ValueError(f"directions are only accepted with embedding='given', not {cfg.embedding!r}")
            self.directions = random_directions(
                cfg.n_features, cfg.d, cfg.embedding == "orthogonal", generator
            )
        self.probs = cfg.firing_probabilities()
        self._firing = None
        if cfg.structure != "exclusive_sets":
            self._firing = _synthetic().ActivationGenerator(
                cfg.n_features, self.probs, correlation_matrix=cfg.correlation_matrix()
            )
        self.fast_sampler = fast_sampler and self._firing is not None
        corr = cfg.correlation_matrix() if cfg.structure == "copula" else None
        # [F, F] Cholesky factor of the fast copula path (None: independent firing or SAELens's sampler)
        self._chol = torch.linalg.cholesky(corr) if self.fast_sampler and corr is not None else None

    def _fire(self, batch: int) -> Tensor:
        """[batch, F] 0/1 firing indicators."""
        cfg = self.cfg
        if self._chol is not None:
            # SAELens's copula: Gaussians with the block correlation, thresholded at the
            # inverse normal CDF of 1 - p (the generator's own thresholds).
            gauss = torch.randn(batch, cfg.n_features) @ self._chol.T
            return (gauss > self._firing.correlation_thresholds).float()
        if self.fast_sampler:
            return (torch.rand(batch, cfg.n_features) < self.probs).float()
        if self._firing is not None:
            return (self._firing.sample(batch) > 0).float()
        choice = torch.randint(cfg.set_size, (batch, cfg.n_sets))
        on = torch.rand(batch, cfg.n_sets) < cfg.p_set
        fired = torch.zeros(batch, cfg.n_sets, cfg.set_size)
        fired.scatter_(-1, choice.unsqueeze(-1), on.float().unsqueeze(-1))
        return fired.reshape(batch, cfg.n_features)

    def sample_coeffs(self, batch: int) -> Tensor:
        """[batch, n_features] non-negative ground-truth coefficients."""
        batch = _check_positive_int("batch", batch)
        cfg = self.cfg
        fired = self._fire(batch)
        if cfg.amplitude == "uniform":
            coeffs = fired * torch.rand(batch, cfg.n_features)
        elif cfg.amplitude == "shared":
            coeffs = fired * torch.rand(batch, 1)
        else:
            coeffs = fired
        if cfg.p_single > 0:
            single = torch.rand(batch) < cfg.p_single
            which = torch.randint(cfg.n_features, (batch,))
            one_hot = torch.zeros(batch, cfg.n_features)
            one_hot[torch.arange(batch), which] = torch.rand(batch)
            coeffs = torch.where(single.unsqueeze(-1), one_hot, coeffs)
        return coeffs

    def sample(self, batch: int) -> ToyBatch:
        """A batch of inputs ``x = coeffs @ directions`` and their coefficients."""
        coeffs = self.sample_coeffs(batch)
        return ToyBatch(coeffs @ self.directions, coeffs)


class SphereData:
    """x = a * u with u uniform on the unit sphere in ``d`` dims and a ~ U[0, 1).

    Inputs spread over a continuum of directions: the limit of ever more features (study Q6).
    There are no discrete true features, so ``coeffs`` of a batch is empty ([batch, 0]).
    """

    def __init__(self, d: int):
        self.d = _check_positive_int("d", d)

    def sample(self, batch: int) -> ToyBatch:
        batch = _check_positive_int("batch", batch)
        u = torch.randn(batch, self.d)
        return ToyBatch(torch.rand(batch, 1) * u / u.norm(dim=-1, keepdim=True), torch.empty(batch, 0))


def random_frame(d: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """[d, k] a random orthonormal k-frame in R^d (orthonormal columns; needs d >= k)."""
    _check_positive_int("k", k)
    if not isinstance(d, int) or isinstance(d, bool) or d < k:
        raise ValueError(f"d must be an int >= the directions' dimension {k}, got {d!r}")
    q, r = torch.linalg.qr(torch.randn(d, k, generator=generator))
    return q * torch.sign(torch.diagonal(r))


def isometric_embedding(directions: Tensor, d: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The same geometry in more dimensions: ``directions @ Q^T`` with Q a random orthonormal
    k-frame in R^d, so every inner product (the Gram matrix) is preserved.

    Args:
        directions: [F, k] (e.g. k = 2: a 2-D toy geometry).

    Returns:
        ``(embedded [F, d], frame Q [d, k])``; ``x @ Q`` maps embedded inputs back to k dims.
    """
    if directions.ndim != 2:
        raise ValueError(f"directions must be [F, k], got shape {tuple(directions.shape)}")
    frame = random_frame(d, directions.shape[1], generator)
    return (directions @ frame.T).contiguous(), frame


def stack_sampler(datasets: list[ToyData | SphereData], batch: int) -> Tensor:
    """x: [len(datasets), batch, d], an independent batch from each data set (one per model).

    Consecutive repeats of the same data set are sampled in one call (much faster for stacks).
    """
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence) or not datasets:
        raise ParameterTypeError(f"datasets must be a non-empty list of data sets (one per model), got {datasets!r}")
    for i, ds in enumerate(datasets):
        if not callable(getattr(ds, "sample", None)):
            raise ParameterTypeError(f"datasets[{i}] must be a data set with a sample(batch) method, got {type(ds).__name__}")
    batch = _check_positive_int("batch", batch)
    out, i = [], 0
    while i < len(datasets):
        j = i
        while j + 1 < len(datasets) and datasets[j + 1] is datasets[i]:
            j += 1
        out.append(datasets[i].sample(batch * (j - i + 1)).x.reshape(j - i + 1, batch, -1))
        i = j + 1
    return torch.cat(out)


# --- Anders et al. (2024): composed features in a trained 2-D toy model -----------------------

ANDERS_P_SINGLE = 0.75


def zipf_copula_config(n_features: int, rho: float, block_size: int = 4, p_max: float = 0.3,
                       p_min: float = 0.003) -> ToyDataConfig:
    """The correlated-rare-features setting of notebooks 01 (Q3), 03 and 04: orthogonal embedding
    in d = n_features (so only co-occurrence can create combinations), Zipf firing probabilities
    from ``p_max`` down to ``p_min``, firing correlated in blocks through a Gaussian copula."""
    return ToyDataConfig(
        n_features, n_features, firing="zipf", p_max=p_max, p_min=p_min, structure="copula",
        rho=rho, block_size=block_size,
    )


def anders_config(experiment: int) -> ToyDataConfig:
    """Feature statistics of Anders et al. experiment 1, 2 or 3 (4 features, sets {x1,x2},{y1,y2}).

    1: one x and one y active, sharing one amplitude U[0,1) (perfectly correlated);
    2: one x and one y active with independent amplitudes;
    3: as 2, but with probability 0.75 the sample is a single one-hot feature.
    The returned config uses the identity embedding (d = 4); :func:`anders_data` embeds in 2-D.
    """
    experiment = check_int("experiment", experiment, 1, 3)
    return ToyDataConfig(
        n_features=4,
        d=4,
        embedding="orthogonal",
        structure="exclusive_sets",
        set_size=2,
        amplitude="shared" if experiment == 1 else "uniform",
        p_single=ANDERS_P_SINGLE if experiment == 3 else 0.0,
    )


def fit_tms_embedding(
    data: ToyData, d_hidden: int = 2, steps: int = 3000, batch: int = 1024, lr: float = 1e-2
) -> tuple[Tensor, float]:
    """Train a ReLU-output toy model ``x' = ReLU(x W W^T + b)`` and return its embedding.

    Args:
        data: feature statistics to train on (its coefficients are the toy model's inputs).
        d_hidden: hidden (bottleneck) dimension.

    Returns:
        ``(W, loss)``: W: [n_features, d_hidden], row i is feature i's direction in hidden space;
        loss is the final reconstruction MSE.
    """
    check_instance("data", data, ToyData)
    d_hidden, steps, batch = (_check_positive_int(n, v) for n, v in (("d_hidden", d_hidden), ("steps", steps), ("batch", batch)))
    lr = check_float("lr", lr, 0.0, low_open=True)
    f = data.cfg.n_features
    W = torch.nn.Parameter(torch.randn(f, d_hidden) * 0.1)
    b = torch.nn.Parameter(torch.zeros(f))
    opt = torch.optim.Adam([W, b], lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        c = data.sample_coeffs(batch)
        loss = (torch.relu(c @ W @ W.T + b) - c).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return W.detach().clone(), float(loss.detach())


def anders_data(experiment: int, embedding: Tensor) -> ToyData:
    """Anders et al. experiment 1-3 data, embedded with ``embedding: [4, d]`` (e.g. a trained TMS)."""
    base = anders_config(experiment)
    embedding = check_tensor("embedding", embedding, 2)
    if embedding.shape[0] != base.n_features:
        raise ValueError(f"embedding must have shape [4, d] (one row per feature), got {tuple(embedding.shape)}")
    cfg = ToyDataConfig(
        **{**base.__dict__, "d": embedding.shape[1], "embedding": "given"}
    )
    return ToyData(cfg, directions=embedding)


def composed_directions(directions: Tensor, set_size: int) -> Tensor:
    """Unit directions of every one-per-set sum of features (the "composed" features).

    directions: [n_sets * set_size, d] -> [set_size ** n_sets, d].
    """
    directions = check_tensor("directions", directions, 2)
    set_size = check_int("set_size", set_size, 1)
    f, d = directions.shape
    if f % set_size:
        raise ValueError(f"number of directions {f} is not a multiple of set_size={set_size}")
    sets = directions.reshape(f // set_size, set_size, d)
    combos = sets[0]
    for s in sets[1:]:
        combos = (combos[:, None, :] + s[None, :, :]).reshape(-1, d)
    return combos / combos.norm(dim=-1, keepdim=True)
