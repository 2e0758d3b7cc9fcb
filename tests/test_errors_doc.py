"""docs/errors.md cannot drift from the code: every listed error is produced by its example.

Each entry of the page is a heading ``#### `Type: message` `` followed by a ``python`` code block;
the block runs after the page's ``python setup`` block and must raise an exception of that type
(or a subclass) whose message matches the heading exactly, ``…`` standing for any text. A block
marked ``python disk-full`` runs while files cannot grow beyond a few kilobytes.
"""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import tempfile
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
HEADING = re.compile(r"^#### `(?P<type>\w+): (?P<message>.*)`\s*$")


def _blocks(lines: list[str], start: int) -> tuple[str, str, int]:
    """The first fenced code block at or after ``start``: (info string, code, index after it)."""
    i = start
    while not lines[i].startswith("```"):
        i += 1
    info, j = lines[i][3:].strip(), i + 1
    while not lines[j].startswith("```"):
        j += 1
    return info, "\n".join(lines[i + 1 : j]), j + 1


def parse() -> tuple[str, list[tuple[str, str, str, str]]]:
    """(setup code, [(type, message, info, code)]) of the page."""
    lines = DOC.read_text().splitlines()
    setup = next(_blocks(lines, i)[1] for i, line in enumerate(lines) if line.startswith("```python setup"))
    entries = []
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if m:
            info, code, _ = _blocks(lines, i + 1)
            entries.append((m["type"], m["message"], info, code))
    return setup, entries


SETUP, ENTRIES = parse()


@contextlib.contextmanager
def disk_full(limit_bytes: int = 4096):
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_the_page_lists_errors():
    assert len(ENTRIES) >= 20
    assert all(info in ("python", "python disk-full") for _, _, info, _ in ENTRIES)


@pytest.mark.parametrize(("kind", "message", "info", "code"), ENTRIES, ids=[e[1][:60] for e in ENTRIES])
def test_each_documented_error_is_what_its_example_raises(kind, message, info, code, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(tmp_path))
    env: dict = {}
    # The examples are this repository's own documentation, run as written.
    exec(SETUP, env)  # noqa: S102
    fault = disk_full() if info == "python disk-full" else contextlib.nullcontext()
    with pytest.raises(BaseException) as info_, fault:
        exec(code, env)  # noqa: S102
    err = info_.value
    assert kind in [c.__name__ for c in type(err).__mro__], f"documented {kind}, raised {type(err).__name__}: {err}"
    pattern = ".*".join(re.escape(part) for part in message.split("…"))
    assert re.fullmatch(pattern, str(err), flags=re.DOTALL), f"documented:\n{message}\nraised:\n{err}"
