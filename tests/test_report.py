"""Tests of sae_ortho.reporting.report: findings files, the README's generated section, and that it is up to date."""

from __future__ import annotations

import pytest

from sae_ortho.core import paths
from sae_ortho.reporting import report


def test_write_findings_atomic_and_section_order(tmp_path):
    p = report.write_findings("04", "## B\n\nsecond", folder=tmp_path)
    report.write_findings("01", "## A\n\nfirst\n\n", folder=tmp_path)
    assert p.name == "findings_04.md" and p.read_text() == "## B\n\nsecond\n"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    assert report.findings_section(tmp_path) == "## A\n\nfirst\n\n## B\n\nsecond\n"
    with pytest.raises(ValueError, match="notebook must be"):
        report.write_findings("a/b", "x", folder=tmp_path)
    with pytest.raises(ValueError, match="empty"):
        report.write_findings("01", "  ", folder=tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        report.write_result("../x.md", "x", folder=tmp_path)


def test_atomic_write_keeps_a_users_file_with_the_old_temporary_name(tmp_path):
    """The temporary name used to be the fixed ``.<name>.tmp``: a user's file of that name was lost."""
    (tmp_path / ".summary.json.tmp").write_text("mine")
    report.atomic_write(tmp_path / "summary.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.json.tmp", "summary.json"]
    assert (tmp_path / ".summary.json.tmp").read_text() == "mine"


def test_render_round_trip(tmp_path):
    readme = f"# T\n\nintro\n\n{report.BEGIN}\nold text\n{report.END}\n\nrest\n"
    new = report.render(readme, "## A\n\nfirst\n")
    assert new == f"# T\n\nintro\n\n{report.BEGIN}\n\n## A\n\nfirst\n\n{report.END}\n\nrest\n"
    assert report.render(new, "## A\n\nfirst\n") == new  # idempotent
    with pytest.raises(ValueError, match="exactly one"):
        report.render("no markers", "x")
    with pytest.raises(ValueError, match="exactly one"):
        report.render(f"{report.END}{report.BEGIN}", "x")
    # the command line rewrites a README and then finds it up to date
    (tmp_path / "results").mkdir()
    report.write_findings("01", "## A\n\nnew", folder=tmp_path / "results")
    file = tmp_path / "README.md"
    file.write_text(readme)
    args = ["--readme", str(file), "--results", str(tmp_path / "results")]
    assert report.main([*args, "--check"]) == 1
    assert report.main(args) == 0
    assert "## A\n\nnew" in file.read_text() and "old text" not in file.read_text()
    assert report.main([*args, "--check"]) == 0


def test_readme_findings_are_generated_from_the_committed_results():
    """The README's findings section is exactly what `python -m sae_ortho.reporting.report` makes of results/."""
    readme = (paths.ROOT / "README.md").read_text()
    assert readme == report.render(readme, report.findings_section()), (
        "README.md is out of date with results/findings_*.md: run `python -m sae_ortho.reporting.report`"
    )
    assert list(paths.COMMITTED_RESULTS.glob(report.PATTERN)), "no committed findings files"
