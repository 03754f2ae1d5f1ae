"""Figures fit for a paper (issue 15 item 5), checked on the files written: PNG (>= 200 dpi),
PDF and SVG next to each other and valid; Theorem-4.1 copies marked derived; the chance line;
one colour per arch / transform across figures; the learning curve of one trial and its
one-line errors. No Ray: stores are written directly, figures drawn from them.

The SVG is the independent witness: matplotlib writes an artist's gid as the element id and
each text as a comment before its glyphs, so ids ('derived', 'chance'), legend texts and fill
colours are read back from the file a reader gets."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from smoke_helpers import fig2_smoke_store

from orchestrator.cli import main
from orchestrator.figures import figure_plot
from orchestrator.figures.common import enrich
from orchestrator.figures.palette import (
    ARCH_COLORS,
    DERIVED_LABEL,
    INFERENCE_COLORS,
    TRANSFORM_COLORS,
)
from orchestrator.store import TRIAL_SCHEMA, Store
from workers.vocab import ARCHS, INFERENCES, TRANSFORMS

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture()
def results(tmp_path) -> Path:
    """A fig2 smoke store over fcn / vec x identity / permutation with the real expansion's
    derived cells (fcn's permutation kernel cell copies identity's), on the synthetic
    dataset, and training history for the finite runs."""
    st, trials = fig2_smoke_store(tmp_path, lambda c: c["arch"] in ("fcn", "vec")
                                  and c["transform"] in ("identity", "permutation"))
    for t in trials:
        c = t.config
        acc = 0.3 + 0.01 * c["seed"] + (0.1 if c["arch"] == "vec" else 0.0)
        hist = [] if t.kind == "kernel" else [
            {"step": s, "train_loss": 0.05 / s, "train_acc": min(1.0, 0.1 + s / 100),
             "test_acc": acc * s / 40, "test_mse": 0.09 - s / 1000, "val_acc": float("nan")}
            for s in (10, 20, 30, 40)]
        st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind=t.kind,
                              arch=c["arch"], inference=c["inference"],
                              transform=c["transform"], seed=c["seed"], status="completed",
                              dataset="synthetic", best_test_acc=acc, test_acc=acc,
                              train_acc=1.0, derived_from=t.derived_from, started_at=T0,
                              finished_at=T0, config_json=json.dumps(c, sort_keys=True)),
                         hist)
    return tmp_path


def _ids(svg: Path) -> list[str]:
    return [e.get("id") for e in ET.parse(svg).iter() if e.get("id")]


def _texts(svg: Path) -> str:
    """Every text drawn (matplotlib writes it as a comment before the glyph paths)."""
    return " ".join(re.findall(r"<!-- (.*?) -->", svg.read_text(), flags=re.S))


def _fills(svg: Path) -> set[str]:
    return {c.lower() for c in re.findall(r"(?:fill|stroke): (#[0-9A-Fa-f]{6})",
                                          svg.read_text())}


def _check_files(png: Path) -> tuple[Path, Path]:
    """PNG, PDF and SVG exist side by side and are what they claim to be."""
    from PIL import Image

    pdf, svg = png.with_suffix(".pdf"), png.with_suffix(".svg")
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) >= 200
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert ET.parse(svg).getroot().tag.endswith("svg")
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]  # no temporaries
    return pdf, svg


# ------------------------------------------------------------------------------ registry
def test_every_figure_module_is_registered_and_other_sweeps_get_fig2():
    """Adding a figure is one module and one registry line: a fig*.py module that is not in
    FIGURES (or a registry entry without its module) is caught here."""
    from orchestrator.figures import FIGURES, fig2, figure_of

    modules = {p.stem for p in (REPO / "orchestrator" / "figures").glob("fig*.py")}
    assert modules == set(FIGURES)
    assert figure_of("my_own_sweep") is FIGURES["fig2"]
    assert FIGURES["fig2"].table is fig2.table


# ------------------------------------------------------------------------------ Fig. 2
def test_plot_writes_png_pdf_svg_with_paper_names(results, capsys):
    out = results / "figs" / "fig2.png"
    assert main(["plot", "fig2", "--results", str(results), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    _, svg = _check_files(out)
    text = _texts(svg)
    assert "Fig. 2: test accuracy" in text and "(smoke preset)" in text and "[" not in text
    assert "Test accuracy (%)" in text
    assert "$I_{3d}$ (identity)" in text and "$P(3d)$ (permutation)" in text
    assert "VEC$_{n}$" in text and "FCN$_{\\infty}$" in text


def test_out_may_name_any_of_the_three_formats(results):
    p = figure_plot("fig2", str(results), results / "f.svg")
    assert p == results / "f.svg"
    _check_files(results / "f.png")


def test_same_results_same_bytes(results, tmp_path):
    """No creation date or random ids in the files: a figure can be diffed and versioned."""
    a = figure_plot("fig2", str(results), tmp_path / "a" / "f.png")
    b = figure_plot("fig2", str(results), tmp_path / "b" / "f.png")
    for ext in ("png", "pdf", "svg"):
        assert a.with_suffix(f".{ext}").read_bytes() == b.with_suffix(f".{ext}").read_bytes()


def test_out_may_be_a_uri(results, tmp_path):
    """A URI keeps its '//' (pathlib would fold it) and goes through pyarrow's filesystem."""
    uri = f"file://{tmp_path}/remote/f.pdf"
    assert figure_plot("fig2", str(results), uri) == uri
    _check_files(tmp_path / "remote" / "f.png")


def test_bad_out_suffix_is_one_line_and_writes_nothing(results, capsys):
    before = sorted(p.name for p in results.rglob("*"))
    assert main(["plot", "fig2", "--results", str(results), "--out",
                 str(results / "f.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("symsweep: error: --out") and err.count("\n") == 1
    assert ".png, .pdf or .svg" in err
    assert sorted(p.name for p in results.rglob("*")) == before


def test_derived_cells_are_marked_hollow_with_a_legend_entry(results):
    _, svg = _check_files(figure_plot("fig2", str(results), results / "f.png"))
    df, _m = Store(str(results), "fig2").load_finished()
    kernel = df[df["kind"] == "kernel"]
    n_derived = int(kernel["derived_from"].notna().sum())
    assert n_derived >= 1  # fcn: permutation copies identity (Theorem 4.1)
    assert _ids(svg).count("derived") == n_derived  # one hatched bar per copied cell
    assert DERIVED_LABEL in _texts(svg)


def test_no_derived_marking_without_derived_rows(tmp_path):
    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.0})
    for tr in ("identity", "permutation"):
        st.write_attempt(dict(trial_id=tr, attempt=1, preset="smoke", kind="kernel",
                              arch="fcn", inference="ntk", transform=tr, seed=0,
                              status="completed", dataset="cifar10", best_test_acc=0.4,
                              started_at=T0, finished_at=T0))
    _, svg = _check_files(figure_plot("s", str(tmp_path), tmp_path / "f.png"))
    assert "derived" not in _ids(svg) and DERIVED_LABEL not in _texts(svg)
    assert "chance" in _ids(svg)  # CIFAR-10: 10 classes


def test_chance_line_at_ten_percent(results):
    _, svg = _check_files(figure_plot("fig2", str(results), results / "f.png"))
    assert _ids(svg).count("chance") == 3  # one per panel: NTK, NN, NN+
    assert "chance (10%)" in _texts(svg)


def test_no_chance_line_for_a_dataset_of_unknown_classes(tmp_path):
    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.0})
    st.write_attempt(dict(trial_id="a", attempt=1, preset="smoke", kind="kernel", arch="fcn",
                          inference="ntk", transform="identity", seed=0, status="completed",
                          dataset="imagenet-someday", best_test_acc=0.4, started_at=T0,
                          finished_at=T0))
    _, svg = _check_files(figure_plot("s", str(tmp_path), tmp_path / "f.png"))
    assert "chance" not in _ids(svg)


# ------------------------------------------------------------------------------ palette
def test_palette_has_one_distinct_colour_per_name():
    for colours, names in ((ARCH_COLORS, ARCHS), (TRANSFORM_COLORS, TRANSFORMS),
                           (INFERENCE_COLORS, INFERENCES)):
        assert list(colours) == list(names)
        assert len(set(colours.values())) == len(names)
        assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in colours.values())


def test_figure_modules_take_colours_from_the_palette_only():
    """No figure module states a colour of its own (a hex literal or a categorical colormap)
    outside palette.py; figS1's widths are a sequential colormap on purpose."""
    bad = []
    for p in sorted((REPO / "orchestrator" / "figures").glob("*.py")):
        if p.name == "palette.py":
            continue
        src = p.read_text()
        bad += [f"{p.name}: {m}" for m in re.findall(r'"#[0-9A-Fa-f]{6}"|tab:\w+|"tab10"', src)]
    assert not bad, bad


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows with every result column, as the loader gives them, enriched for the figures."""
    full = [{f.name: r.get(f.name) for f in TRIAL_SCHEMA} for r in rows]
    return enrich(pd.DataFrame(full), 0.0)


def test_figS5_names_the_cells_it_cannot_draw(tmp_path, caplog):
    """A cell with no successful run of one init is no point: the figure says which under
    the axes ("not drawn: ...", in the SVG's text) and the log warns, instead of a scatter
    with a point silently missing."""
    from orchestrator.figures import figS5

    rows = [dict(trial_id=f"{a}{i}", kind="train", arch=a, inference="nn",
                 transform="identity", seed=0, status="completed", dataset="synthetic",
                 best_test_acc=0.3, train_acc=1.0, config_json=json.dumps({"first_layer_init": i}))
            for a, i in (("vec", "gaussian"), ("vec", "uniform"), ("gap", "gaussian"))]
    svg = tmp_path / "figS5.svg"
    with caplog.at_level("WARNING", logger="symsweep"):
        figS5.figS5_plot(_frame(rows), {"preset": "smoke"}, svg)
    said = [r.getMessage() for r in caplog.records if "not drawn" in r.getMessage()]
    assert len(said) == 1 and "(no successful uniform run)" in said[0] and "VEC" not in said[0]
    text = svg.read_text()
    assert "not drawn" in text and "no successful uniform run" in text
    assert ARCH_COLORS["vec"].lower() in _fills(svg)  # the complete cell is drawn


def test_one_colour_per_arch_and_transform_across_figures(results, tmp_path):
    """VEC is drawn in ARCH_COLORS['vec'] in Fig. 4 and Fig. S5; each transform in its
    TRANSFORM_COLORS entry in Fig. 2 and Fig. S6; no figure uses another figure's palette."""
    from orchestrator.figures import fig4, figS5, figS6

    m = {"sweep": "fig4", "preset": "smoke", "analysis": {"fit_first": 2, "fit_last": 2}}
    rows4 = [dict(trial_id=f"{a}{n}", kind="train", arch=a, inference="nn",
                  transform="identity", seed=0, status="completed", dataset="synthetic",
                  best_test_acc=0.2 + n / 1000, test_mse=0.1 - n / 10000, train_acc=1.0,
                  config_json=json.dumps({"train_size": n}))
             for a in ("vec", "lcn") for n in (40, 80, 160)]
    svg4 = tmp_path / "fig4.svg"
    fig4.curves_plot(_frame(rows4), m, svg4, first=2, last=2)
    rows5 = [dict(trial_id=f"{a}{i}", kind="train", arch=a, inference="nn",
                  transform="identity", seed=0, status="completed", dataset="synthetic",
                  best_test_acc=0.3, train_acc=1.0,
                  config_json=json.dumps({"first_layer_init": i}))
             for a in ("vec", "gap") for i in ("gaussian", "uniform")]
    svg5 = tmp_path / "figS5.svg"
    figS5.figS5_plot(_frame(rows5), {"preset": "smoke"}, svg5)
    rows6 = [dict(trial_id=f"{t}{n}", kind="kernel", arch="fcn", inference="ntk", transform=t,
                  seed=0, status="completed", dataset="synthetic", best_test_acc=0.3,
                  test_mse=0.1 - n / 10000, config_json=json.dumps({"train_size": n}))
             for t in TRANSFORMS for n in (40, 80)]
    svg6 = tmp_path / "figS6.svg"
    figS6.figS6_plot(_frame(rows6), {"preset": "smoke"}, svg6)
    _, svg2 = _check_files(figure_plot("fig2", str(results), results / "f.png"))

    vec = ARCH_COLORS["vec"].lower()
    assert vec in _fills(svg4) and vec in _fills(svg5)
    assert ARCH_COLORS["lcn"].lower() in _fills(svg4)
    assert ARCH_COLORS["gap"].lower() in _fills(svg5)
    for t in ("identity", "permutation"):
        assert TRANSFORM_COLORS[t].lower() in _fills(svg2), t
    for t in TRANSFORMS:
        assert TRANSFORM_COLORS[t].lower() in _fills(svg6), t
    # a figure coloured by arch does not borrow the transform colours, and vice versa
    assert not {c.lower() for c in TRANSFORM_COLORS.values()} & _fills(svg4)
    assert not {c.lower() for c in ARCH_COLORS.values()} & _fills(svg2)


# ------------------------------------------------------------------------------ curves
def _train_id(results: Path) -> str:
    df, _ = Store(str(results), "fig2").load_finished()
    return str(df[(df["kind"] == "train") & (df["arch"] == "vec")]["trial_id"].iloc[0])


def test_plot_trial_id_draws_its_learning_curve(results, capsys):
    tid = _train_id(results)
    assert main(["plot", tid, "--results", str(results)]) == 0
    png = results / "fig2" / "curves" / f"{tid}.png"
    assert f"wrote {png}" in capsys.readouterr().out
    _, svg = _check_files(png)
    text = _texts(svg)
    assert "Training step" in text and "Accuracy (%)" in text and tid in text
    assert "training MSE (minibatches, 2 × loss" in text and "test MSE" in text
    assert "validation" not in text  # an all-NaN split is left out, not drawn empty
    assert "chance" in _ids(svg)


def test_curves_option_and_unique_prefix(results, tmp_path):
    tid = _train_id(results)
    out = tmp_path / "c.pdf"
    assert main(["plot", "fig2", "--curves", tid[:6], "--results", str(results),
                 "--out", str(out)]) == 0
    _check_files(out.with_suffix(".png"))


@pytest.mark.parametrize("argv,needle", [
    (["plot", "0123456789abcdef"], "neither a sweep"),
    (["plot", "fig2", "--curves", "0123456789abcdef"], "no trial '0123456789abcdef'"),
    (["plot", "fig2", "--curves", "ab"], "at least 4 characters"),
])
def test_unknown_trial_is_one_line_exit_2(results, capsys, argv, needle):
    before = sorted(p.name for p in results.rglob("*"))
    assert main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("symsweep: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert sorted(p.name for p in results.rglob("*")) == before


def test_a_kernel_trial_has_no_learning_curve(results, capsys):
    df, _ = Store(str(results), "fig2").load_finished()
    kid = str(df[df["kind"] == "kernel"]["trial_id"].iloc[0])
    assert main(["plot", kid, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kernel regression has no training steps" in err
    assert not (results / "fig2" / "curves").exists()
