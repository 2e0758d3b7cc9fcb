"""Tests of sae_ortho.reporting.plotting: stable figure saving and the figure helpers."""

from __future__ import annotations

import numpy as np
import pytest

from sae_ortho.reporting import plotting
from sae_ortho.reporting.plotting import (
    directions_2d,
    grid_of_lines,
    heatmaps,
    lines_with_spread,
    plt,
    save_figure,
    status_by_frequency,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _figure():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2], marker="o")
    ax.set(title="test", xlabel="x")
    return fig


def test_save_figure_writes_png(tmp_path):
    path = save_figure(_figure(), "example", folder=tmp_path / "sub")
    assert path == tmp_path / "sub" / "example.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["example.png"]  # no temporary file left
    assert b"Software" not in data  # no software stamp


def test_save_figure_same_bytes(tmp_path):
    fig = _figure()
    a = save_figure(fig, "a", folder=tmp_path).read_bytes()
    b = save_figure(fig, "b", folder=tmp_path).read_bytes()
    assert a == b
    # a freshly drawn identical figure gives the same bytes too, and overwriting is fine
    c = save_figure(_figure(), "a", folder=tmp_path).read_bytes()
    assert c == a
    # a different figure gives different bytes
    fig2 = _figure()
    fig2.axes[0].set_title("other")
    assert save_figure(fig2, "d", folder=tmp_path).read_bytes() != a


def test_save_figure_default_folder_is_project_figures():
    assert plotting.FIGURES.name == "figures"
    assert plotting.FIGURES.parent == plotting.Path(plotting.__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["", "a/b", "a b", "a\\b", "../up"])
def test_save_figure_bad_name(tmp_path, name):
    with pytest.raises(ValueError, match="figure name"):
        save_figure(_figure(), name, folder=tmp_path)
    assert not any(tmp_path.iterdir())


def test_heatmaps():
    vals = [np.random.default_rng(0).random((2, 3)), np.zeros((2, 3))]
    fig = heatmaps(vals, ["a", "b"], ["r0", "r1"], [1, 2, 3], "x", "y", suptitle="s")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "a" and fig.axes[1].get_xlabel() == "x"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]
    assert len(fig.axes[0].texts) == 6  # one annotation per cell


def test_directions_2d():
    dec = np.array([[1.0, 0.0], [0.0, 1.0]])
    true = [np.array([[2.0, 0.0], [0.0, 3.0]]), np.array([[1.0, 1.0], [-1.0, 1.0], [0.0, -4.0]])]
    fig = directions_2d([[dec, -dec], [dec]], ["p", "q"], [dec, dec], true)
    assert len(fig.axes) == 2
    # panel 0: 4 trained rows + 2 reference + 2 true lines; panel 1: 2 + 2 + 3
    assert len(fig.axes[0].lines) == 8 and len(fig.axes[1].lines) == 7
    # true directions are drawn as unit vectors
    end = fig.axes[1].lines[-1].get_xydata()[-1]
    np.testing.assert_allclose(end, [0.0, -1.0])


def test_lines_and_grid():
    x = [1, 2, 4]
    series = {"a": np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]])}
    fig = lines_with_spread(x, series, "x", "y", logx=True, logy=True)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 2.0, 4.0])  # mean over seeds
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    fig = grid_of_lines(x, {"p": series, "q": series}, "x", "y", suptitle="s")
    assert [a.get_title() for a in fig.axes] == ["p", "q"]


def test_status_by_frequency():
    fr = {"c1": {"alone": np.array([0.5, 0.2]), "missed": np.array([0.5, 0.8])}}
    fig = status_by_frequency(["lo", "hi"], fr)
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    tops = sorted(p.get_y() + p.get_height() for p in ax.patches)
    np.testing.assert_allclose(tops[-2:], [1.0, 1.0])  # stacked to 1


def test_frontier_and_by_setting_draw_every_series():
    x = np.array([[2.0, 4.0, 8.0], [2.2, 4.1, 7.9]])
    y = np.array([[0.1, 0.2, 0.3], [0.12, 0.22, 0.28]])
    fig = plotting.frontier({"F1": {"a": (x, y), "b": (x, 1 - y)}}, styles={"a": {"color": "red"}},
                            reference={"L0*": 5.0})
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]  # one legend, beside the panels
    assert ax.get_legend() is None
    assert any(abs(line.get_xdata()[0] - 5.0) < 1e-12 for line in ax.get_lines() if len(line.get_xdata()) == 2)
    fig = plotting.by_setting(["0", "10"], {"F1": {"L1": np.array([[0.1, 0.2], [0.3, 0.4]])}}, xlabel="λ",
                              hlines={"F1": {"peer": 0.25}}, styles={"peer": {"color": "green"}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["L1", "peer"]


def test_reference_histogram_is_a_band_that_does_not_set_the_scale():
    rng = np.random.default_rng(0)
    spread, spike = rng.uniform(0.2, 0.8, 500), 0.5 + 0.001 * rng.standard_normal(500)
    fig = plotting.histograms({"p": {"trained": [spread], "random": [spike]}}, "x", references=("random",))
    ax = fig.axes[0]
    assert ax.get_ylim()[1] < 10  # the spike would reach a density of hundreds
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["trained", "random (5-95%, median)"]


def test_frequency_bars_legend_is_outside_the_panels():
    fractions = {"c": {"alone": np.array([0.5, 0.6]), "missed": np.array([0.5, 0.4])}}
    fig = plotting.status_by_frequency(["a", "b"], fractions)
    assert fig.axes[0].get_legend() is None and [t.get_text() for t in fig.legends[0].get_texts()] == ["alone", "missed"]


def test_frontiers_and_intervals():
    xs = np.array([[1.0, 2.0, 3.0], [1.1, 2.1, 3.2]])
    fig = plotting.frontiers({"64 latents": {"vanilla": (xs, 1 / xs), "ortho": (xs - 0.2, 0.9 / xs)}},
                             "L0", "FVU", suptitle="s", logy=True)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * (2 + 1) and ax.get_yscale() == "log"  # two seeds + the mean, per label
    np.testing.assert_allclose(ax.lines[2].get_xdata(), xs.mean(0))
    fig = plotting.intervals(["a", "b"], [0.1, -0.2], [0.0, -0.3], [0.2, -0.1], "Δ MCC", groups=["g", "h"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    segs = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[:, 0] for s in segs], [[0.0, 0.2], [-0.3, -0.1]])
    fig = grid_of_lines([1, 2], {f"p{i}": {"s": np.ones((2, 2))} for i in range(3)}, "x", "y", ncols=2, logy=True)
    assert sum(a.get_visible() for a in fig.axes) == 3 and fig.axes[0].get_yscale() == "log"
