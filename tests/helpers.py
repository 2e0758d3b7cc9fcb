"""Small helpers shared by several test modules."""

from pathlib import Path

import torch


class Interrupt:
    """Wraps a sampler; raises KeyboardInterrupt on call number ``at`` (1-based)."""

    def __init__(self, sample, at):
        self.sample, self.at, self.calls = sample, at, 0

    def __call__(self, b):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.sample(b)


def tiny_gpt_neox(folder: str | Path, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Path:
    """Save a tiny randomly initialised GPT-NeoX and a word-level tokenizer into ``folder``.

    For unit tests only (it knows ~60 words and has random weights): it exercises the real loading
    path (``save_pretrained`` / ``from_pretrained``) without the hub. Returns ``folder``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    text = [
        "the quick brown fox jumps over the lazy dog",
        "a sparse autoencoder learns features of the residual stream",
        "import torch and numpy then train the model on a batch of tokens",
        "every layer adds its output to the residual stream of the transformer",
        "in the beginning was the word and the word was with the model",
    ]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["<unk>", "<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<|endoftext|>")
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=2 * d_model,
        max_position_embeddings=64,
        initializer_range=0.2,  # larger than the default so that interventions visibly matter
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic, without touching the global RNG
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
