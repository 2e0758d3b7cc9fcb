"""Sparse autoencoders: ReLU + L1 ("vanilla", unit-norm decoder rows) and TopK.

One class serves a single SAE and a *stack* of independent SAEs trained side by side (seeds and
hyperparameters along a leading dimension), because the toy sweeps train hundreds of tiny SAEs
and one batched matmul is far cheaper than hundreds of small ones.

Shapes (``M`` = number of stacked models; absent for a single SAE):

- ``W_enc: [M, d, n]``, ``b_enc: [M, n]``, ``W_dec: [M, n, d]``, ``b_dec: [M, d]``
- ``x: [M, batch, d]`` -> ``codes: [M, batch, n]``

Rows of ``W_dec`` are the latent (dictionary) directions, as in SAELens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sae_ortho.core.validation import check_choice, check_instance, check_int, check_tensor

SAE_KINDS = ("relu", "topk")
INITS = ("tied", "independent")


@dataclass(frozen=True)
class SAEConfig:
    """Architecture of an SAE (or a stack of ``n_models`` independent SAEs).

    Attributes:
        d: input dimension.
        n_latents: dictionary size.
        kind: ``"relu"`` (ReLU encoder, trained with an L1 penalty) or ``"topk"``.
        k: active latents per input for ``"topk"``; must be None for ``"relu"``.
        n_models: number of stacked independent models, or None for a single SAE.
        init: ``"tied"`` (encoder = decoder transpose, as SAELens and dictionary_learning) or
            ``"independent"`` (encoder columns are their own random unit vectors, drawn after the
            decoder from the same generator, so the decoder is the same as with ``"tied"``).
    """

    d: int
    n_latents: int
    kind: str = "relu"
    k: int | None = None
    n_models: int | None = None
    init: str = "tied"

    def __post_init__(self) -> None:
        for name in ("d", "n_latents"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        check_choice("kind", self.kind, SAE_KINDS)
        if self.kind == "topk":
            object.__setattr__(self, "k", check_int("k", self.k, 1, self.n_latents))
        elif self.k is not None:
            raise ValueError(f"k is only used with kind='topk'; pass k=None for kind={self.kind!r}, got k={self.k!r}")
        object.__setattr__(self, "n_models", check_int("n_models", self.n_models, 1, optional=True))
        check_choice("init", self.init, INITS)

    def key_fields(self) -> dict:
        """The fields that identify the architecture in run keys and checkpoint fingerprints.

        ``init`` appears only when it is not the default, so runs keyed before the field existed
        keep their keys (and their checkpoints stay resumable).
        """
        out = dataclasses.asdict(self)
        if out["init"] == "tied":
            del out["init"]
        return out


class SAE(nn.Module):
    """A ReLU+L1 or TopK sparse autoencoder, or a stack of independent ones.

    ``x_hat = decode(encode(x))`` with
    ``encode(x) = act((x - b_dec) @ W_enc + b_enc)`` and ``decode(c) = c @ W_dec + b_dec``.
    Decoder rows are kept at unit norm by :meth:`normalize_decoder` (called by the trainer after
    each step), so the L1 penalty on codes cannot be dodged by growing the decoder.
    """

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        check_instance("cfg", cfg, SAEConfig)
        check_instance("generator", generator, torch.Generator, optional=True)
        self.cfg = cfg
        lead = () if cfg.n_models is None else (cfg.n_models,)
        # Decoder rows: random unit vectors; encoder initialised as the decoder's transpose
        # (the tied init used by SAELens and dictionary_learning), or independently.
        w_dec = torch.randn(*lead, cfg.n_latents, cfg.d, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        if cfg.init == "tied":
            self.W_enc = nn.Parameter(w_dec.transpose(-1, -2).clone())
        else:
            w_enc = torch.randn(*lead, cfg.n_latents, cfg.d, generator=generator)
            self.W_enc = nn.Parameter((w_enc / w_enc.norm(dim=-1, keepdim=True)).transpose(-1, -2).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(*lead, cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(*lead, cfg.d))

    @property
    def stacked(self) -> bool:
        return self.cfg.n_models is not None

    def pre_acts(self, x: Tensor) -> Tensor:
        """x: [(M,) batch, d] -> pre-activations [(M,) batch, n]."""
        return (x - self.b_dec.unsqueeze(-2)) @ self.W_enc + self.b_enc.unsqueeze(-2)

    def activate(self, pre: Tensor) -> Tensor:
        """Pre-activations [(M,) batch, n] -> codes (ReLU, or ReLU of the top k)."""
        if self.cfg.kind == "relu":
            return torch.relu(pre)
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, x: Tensor) -> Tensor:
        """x: [(M,) batch, d] -> codes [(M,) batch, n] (non-negative, sparse)."""
        self._check_input(x)
        return self.activate(self.pre_acts(x))

    def decode(self, codes: Tensor) -> Tensor:
        """codes: [(M,) batch, n] -> reconstruction [(M,) batch, d]."""
        check_tensor("codes", codes, 3 if self.stacked else 2, finite=False)
        if codes.shape[-1] != self.cfg.n_latents:
            raise ValueError(f"codes must have n_latents={self.cfg.n_latents} as last dim, got shape {tuple(codes.shape)}")
        return codes @ self.W_dec + self.b_dec.unsqueeze(-2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(x_hat, codes)``."""
        codes = self.encode(x)
        return self.decode(codes), codes

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (dead rows of norm 0 are left as they are)."""
        norms = self.W_dec.norm(dim=-1, keepdim=True)
        self.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each decoder row (keeps rows on the sphere)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= (self.W_dec.grad * w).sum(-1, keepdim=True) * w

    def select(self, i: int) -> SAE:
        """The ``i``-th model of a stack as a single (un-stacked) SAE with copied weights."""
        if not self.stacked:
            raise ValueError("select() needs a stacked SAE (cfg.n_models is None)")
        i = check_int("i", i)
        if not 0 <= i < self.cfg.n_models:
            raise IndexError(f"model index must be in [0, {self.cfg.n_models}), got {i}")
        # A private generator: the init is overwritten below, and drawing it from the global
        # generator would silently shift every later random draw (data, other models' init).
        cfg = SAEConfig(self.cfg.d, self.cfg.n_latents, self.cfg.kind, self.cfg.k, init=self.cfg.init)
        single = SAE(cfg, generator=torch.Generator())
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(getattr(self, name)[i])
        return single

    def _check_input(self, x: Tensor) -> None:
        check_tensor("x", x, finite=False)
        want = 3 if self.stacked else 2
        if x.ndim != want or x.shape[-1] != self.cfg.d:
            lead = f"[{self.cfg.n_models}, batch, " if self.stacked else "[batch, "
            raise ValueError(f"x must have shape {lead}{self.cfg.d}], got {tuple(x.shape)}")
        if self.stacked and x.shape[0] != self.cfg.n_models:
            raise ValueError(f"x must have n_models={self.cfg.n_models} as dim 0, got {x.shape[0]}")
        if x.dtype != self.W_enc.dtype:
            raise ValueError(f"x must have the SAE's dtype {self.W_enc.dtype}, got {x.dtype}; convert it (e.g. x.float())")
