"""Tests of sae_ortho.core.atomic, the one writer: complete files or none, never a user's file touched."""

from __future__ import annotations

import pytest

from sae_ortho.core import atomic


def test_atomic_write_text_and_bytes(tmp_path):
    assert atomic.atomic_write(tmp_path / "a" / "t.txt", "héllo").read_text() == "héllo"
    assert atomic.atomic_write(tmp_path / "b.bin", b"\x00\x01", fsync=True).read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin"]  # no temporary left
    with pytest.raises(TypeError, match="data must be str or bytes"):
        atomic.atomic_write(tmp_path / "c", 3)


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_temporary_names_are_unique_and_keep_the_suffix(tmp_path):
    names = {atomic.temp_path(tmp_path / "f.png", ".png").name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("f.png" + atomic.TMP_MARK) and n.endswith(".png") for n in names)


def test_a_users_file_with_an_old_temporary_name_is_kept(tmp_path):
    for name in ("f.tmp", ".f.tmp", "f.lib-tmp-notes"):
        (tmp_path / name).write_text("mine")
    with atomic.replacing(tmp_path / "f") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".f.tmp", "f", "f.lib-tmp-notes", "f.tmp"]
    assert all((tmp_path / n).read_text() == "mine" for n in (".f.tmp", "f.tmp", "f.lib-tmp-notes"))
