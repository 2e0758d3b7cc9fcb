"""A training forward / backward that touches only the active codes.

An SAE's step is six products of ``batch x d x n`` in the dense form (encoder and decoder forward,
their weight gradients, the gradient of the codes, the gradient of the input of the decoder), yet
only ``L0 / n`` of the codes are non-zero (TopK: ``k / n``). Only the encoder's forward product
needs every latent; everything after it runs over the active entries:

- decoder forward: ``x_hat[r] = sum_e a_e W_dec[c_e]`` over the entries ``e = (r, c)`` of row r;
- decoder backward: ``dL/da_e = <g[r], W_dec[c]>`` and ``dL/dW_dec[c] = sum_e a_e g[r_e]``;
- encoder backward: ``dL/dW_enc[:, c] = sum_e dL/dpre_e (x[r_e] - b_dec)``, ``dL/db_enc[c] = sum_e
  dL/dpre_e``, and ``dL/db_dec = -W_enc dL/db_enc``.

Every sum is an ``embedding_bag`` (sum mode, per-entry weights) over entries grouped by row or by
latent, so the kernels are torch's own and each sum runs in a fixed order: the result is
deterministic on a CPU (same inputs, same bits) and works on any device torch supports.
:class:`Entries` holds the active set of a batch in both groupings; :func:`encode_at` and
:func:`decode_entries` are the two differentiable pieces. Stacked SAEs (``M`` models) are handled
by flattening: row ``r = m * batch + b``, latent ``c = m * n + j``.

Shapes: ``x: [(M,) batch, d]``, ``W_enc: [(M,) d, n]``, ``W_dec: [(M,) n, d]``; an entry set of
``E`` active codes has ``rows, cols: [E]``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import embedding_bag


@dataclass(frozen=True)
class Entries:
    """The active entries of a batch of codes, flattened over stacked models.

    Attributes:
        rows: [E] flat row index ``m * batch + b`` of each entry, non-decreasing.
        cols: [E] flat latent index ``m * n + j``.
        row_offsets: [n_rows] where each row's entries start (rows are contiguous).
        by_col: [E] a permutation that groups the entries by latent (stable, so deterministic).
        col_offsets: [n_cols] where each latent's entries start in ``by_col`` order.
        n_rows: ``M * batch``; n_cols: ``M * n``.
    """

    rows: Tensor
    cols: Tensor
    row_offsets: Tensor
    by_col: Tensor
    col_offsets: Tensor
    n_rows: int
    n_cols: int

    @staticmethod
    def _offsets(index: Tensor, size: int) -> Tensor:
        counts = torch.bincount(index, minlength=size)
        return torch.cumsum(counts, 0) - counts

    @classmethod
    def build(cls, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Entries:
        """Entries from flat ``rows`` (non-decreasing) and ``cols``, both [E] int64."""
        by_col = torch.argsort(cols, stable=True)
        return cls(rows, cols, cls._offsets(rows, n_rows), by_col, cls._offsets(cols, n_cols), n_rows, n_cols)

    @classmethod
    def topk(cls, pre: Tensor, k: int) -> tuple[Entries, Tensor]:
        """The top ``k`` pre-activations of each row: ``pre: [(M,) batch, n]`` (no gradient needed).

        Returns the entries (``k`` per row) and their values ``[E]``, grouped by row."""
        n, batch = pre.shape[-1], pre.shape[-2]
        idx = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # [(M,) batch, k], by latent
        values = pre.gather(-1, idx)
        n_rows = idx.shape[:-1].numel()
        rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
        cols = idx.reshape(-1) + (rows // batch) * n
        return cls.build(rows, cols, n_rows, n_rows // batch * n), values.reshape(-1)

    @classmethod
    def positive(cls, pre: Tensor) -> tuple[Entries, Tensor]:
        """The entries with ``pre > 0`` (a ReLU's active codes), ``pre: [(M,) batch, n]``.

        Returns the entries and their values ``[E]``, grouped by row."""
        n, batch = pre.shape[-1], pre.shape[-2]
        flat = pre.reshape(-1, n)
        r, j = (flat > 0).nonzero(as_tuple=True)  # row-major: rows non-decreasing
        cols = j + (r // batch) * n
        return cls.build(r, cols, flat.shape[0], flat.shape[0] // batch * n), flat[r, j]

    def pattern(self, dtype: torch.dtype) -> Tensor:
        """The entries as a sparse CSR matrix ``[n_rows, n_cols]`` (zero values), for
        :func:`torch.sparse.sampled_addmm`: columns are sorted within each row, as CSR requires."""
        crow = torch.cat([self.row_offsets, self.rows.new_tensor([self.rows.numel()])])
        with warnings.catch_warnings():  # "CSR support is in beta": sampled_addmm is all we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, self.cols, torch.zeros(self.cols.numel(), dtype=dtype, device=self.cols.device),
                                           (self.n_rows, self.n_cols), check_invariants=False)

    def latent(self, n: int) -> Tensor:
        """[E] the latent index ``j`` of each entry within its model."""
        return self.cols % n


def _bag(index: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """``out[i] = sum over the i-th group of weights_e * table[index_e]`` (a sum-mode embedding bag)."""
    if index.numel() == 0:
        return table.new_zeros(offsets.shape[0], table.shape[-1])
    return embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weights)


def _transpose(t: Tensor) -> Tensor:
    """``t.transpose(-1, -2)`` as a contiguous tensor, copied in tiles where the shape allows (a
    plain transposing copy strides through memory and is about twice slower on a CPU)."""
    rows, cols = t.shape[-2], t.shape[-1]
    for tile in (32, 16, 8):
        if rows % tile == 0 and cols % tile == 0:
            lead = t.shape[:-2]
            tiled = t.reshape(*lead, rows // tile, tile, cols // tile, tile)
            k = len(lead)
            order = (*range(k), k + 2, k + 3, k, k + 1)
            return tiled.permute(order).contiguous().reshape(*lead, cols, rows)
    return t.transpose(-1, -2).contiguous()


class _EncodeAt(torch.autograd.Function):
    """Pre-activations at the entries, with the encoder's gradient computed over the entries only."""

    @staticmethod
    def forward(ctx, values, x_c, W_enc, b_enc, b_dec, entries: Entries):  # b_enc, b_dec: for their gradients
        ctx.entries = entries
        ctx.save_for_backward(x_c, W_enc)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        e: Entries = ctx.entries
        x_c, W_enc = ctx.saved_tensors
        d, n = W_enc.shape[-2], W_enc.shape[-1]
        lead = W_enc.shape[:-2]
        # dL/dW_enc^T[c] = sum over the latent's entries of grad_e * x_c[r_e]
        g_wt = _bag(e.rows[e.by_col], x_c.reshape(-1, d), e.col_offsets, grad[e.by_col])  # [M*n, d]
        g_w = _transpose(g_wt.reshape(*lead, n, d))
        # dL/db_enc[c] = sum over the latent's entries of grad_e
        g_b = _bag(e.by_col, grad.unsqueeze(-1), e.col_offsets, None).squeeze(-1)
        g_b = g_b.reshape(*lead, n)
        g_bdec = -(W_enc @ g_b.unsqueeze(-1)).squeeze(-1)  # x_c = x - b_dec
        return None, None, g_w, g_b, g_bdec, None


def encode_at(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, values: Tensor, entries: Entries) -> Tensor:
    """The pre-activations at ``entries`` ([E]) as a differentiable function of the encoder.

    ``values`` are those pre-activations already computed (without gradient) by the dense encoder
    product, ``(x - b_dec) @ W_enc + b_enc``; the backward pass touches only the entries.
    """
    x_c = (x - b_dec.unsqueeze(-2)).detach()
    return _EncodeAt.apply(values.detach(), x_c, W_enc, b_enc, b_dec, entries)


class _DecodeEntries(torch.autograd.Function):
    """``x_hat[r] = sum_e a_e W_dec[c_e]`` with both gradients over the entries only."""

    @staticmethod
    def forward(ctx, acts, W_dec_flat, entries: Entries):
        ctx.entries = entries
        ctx.save_for_backward(acts, W_dec_flat)
        return _bag(entries.cols, W_dec_flat, entries.row_offsets, acts)

    @staticmethod
    def backward(ctx, grad):
        e: Entries = ctx.entries
        acts, W = ctx.saved_tensors
        g_acts = g_w = None
        if ctx.needs_input_grad[0]:  # <grad[r], W[c]> at the entries only (a sampled product)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                g_acts = torch.sparse.sampled_addmm(e.pattern(grad.dtype), grad, W.transpose(0, 1), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            g_w = _bag(e.rows[e.by_col], grad, e.col_offsets, acts[e.by_col])
        return g_acts, g_w, None


def decode_entries(acts: Tensor, W_dec: Tensor, entries: Entries) -> Tensor:
    """``[(M,) batch, d]``: the codes ``acts`` ([E], at ``entries``) decoded with ``W_dec: [(M,) n, d]``
    (no bias)."""
    out = _DecodeEntries.apply(acts, W_dec.reshape(-1, W_dec.shape[-1]), entries)
    return out.reshape(*W_dec.shape[:-2], -1, W_dec.shape[-1])
