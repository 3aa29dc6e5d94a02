"""The HTML report: readable content (no NaN, labelled circuit, mapping diagram, header), and a
page that loads in headless Chromium without console errors and shows every section."""

from __future__ import annotations

import html as htmllib
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from circuitlens import __version__
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, HeadMap
from circuitlens.experiments import ExperimentConfig, ExperimentResult
from circuitlens.report.page import PLOTLY_JS, write_plotly_js, write_report

TASK = "entity_tracking"


def _sweep(name: str, n_layers: int, n_heads: int, seed: int, estimated=()) -> dict:
    """A sweep with bootstrap intervals; ``estimated`` heads as a screened sweep leaves them
    (no exact value, NaN interval)."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(n_layers, n_heads, generator=g) * 0.4 - 0.1
    ci = torch.stack([delta - 0.02, delta + 0.03])
    exact = torch.ones(n_layers, n_heads, dtype=torch.bool)
    for layer, head in estimated:
        ci[:, layer, head] = float("nan")
        exact[layer, head] = False
    return AblationResult(
        0.9, 0.7, 0.7 - delta, delta, name, AblationConfig(), delta_ci=ci, exact=exact
    ).to_dict()


def _synthetic_run(directory: Path) -> ExperimentResult:
    """A finished run written by hand: one task, the references and three conditions."""
    cfg = ExperimentConfig(
        tasks=(TASK,), conditions=("student", "teacher", "ce", "ce+align", "ce+rand"), seeds=(0, 1)
    )
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))
    circuit = Circuit(
        {"A": ["L3H1", "L2H0"], "B": ["L1H4"], "C": []},
        {"A": "last", "B": "query_label", "C": "last"},
        {"faithfulness": 0.91, "circuit_accuracy": float("nan")},
    )
    head_map = HeadMap([("L1H2", "L3H1"), ("L0H3", "L1H4")], [0.012, 0.05])
    setup = {
        "task": TASK,
        "circuit": circuit.to_dict(),
        "circuit_note": "",
        "teacher_sweep": _sweep("teacher", 4, 8, 0, estimated=[(1, 4)]),
        "student_sweep": _sweep("student", 2, 4, 1),
        "head_map": head_map.to_dict(),
        "teacher_accuracy": 0.96,
        "student_accuracy": 0.71,
        "student_test_correct": _correct(0.71, "student"),
        "teacher_test_correct": _correct(0.96, "teacher"),
        "student_circuit_accuracy": 0.3,
        "teacher_circuit_accuracy": None,
        "student_format_accuracy": {},
        "teacher_format_accuracy": {},
        "student_val_accuracy": 0.70,
        "fingerprints": {},
        "teacher_shape": [4, 8, 4],
        "student_shape": [2, 4, 2],
        "seconds": 1.0,
    }
    (directory / TASK).mkdir()
    (directory / TASK / "setup.json").write_text(json.dumps(setup).replace("NaN", "null"))
    for c, base in (("ce", 0.75), ("ce+align", 0.76), ("ce+rand", 0.74)):
        for seed in (0, 1):
            acc = base + 0.01 * seed
            cell = {
                "task": TASK,
                "condition": c,
                "seed": seed,
                "accuracy": acc,
                "mean_cka_before": 0.3,
                "mean_cka_after": 0.5,
                "heads_trained": 2,
                "head_fraction": 0.25,
                "param_fraction": 0.031,
                "pairs": [["L1H2", "L0H5"], ["L0H3", "L2H0"]]
                if c == "ce+rand"
                else head_map.to_dict()["pairs"],
                "steps": 4,
                "final_loss": 1.0,
                "curve": [
                    {"step": 2, "val_accuracy": acc - 0.02, "val_cka": 0.4},
                    {"step": 4, "val_accuracy": acc, "val_cka": 0.5},
                ],
                "seconds": 1.0,
                "resumed": False,
                "circuit_accuracy": acc - 0.1,
                "format_accuracy": {"default": acc, "instruction": acc - 0.05},
                "test_correct": _correct(acc, f"{c}:{seed}"),
                "cka_before": {
                    "value": [0.1, 0.2],
                    "null_mean": [0.0, 0.01],
                    "null_sd": [0.02, 0.03],
                    "n_perm": 20,
                },
                "cka_after": {
                    "value": [0.5, 0.6],
                    "null_mean": [0.0, 0.01],
                    "null_sd": [0.02, 0.03],
                    "n_perm": 20,
                    "estimator": "unbiased",
                },
            }
            if c == "ce+align":  # a cell of this version: its lr and kept step recorded
                cell |= {"lr": 2e-4, "kept_step": 4}
            d = directory / TASK / c / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "cell.json").write_text(json.dumps(cell))
    return ExperimentResult.load(directory)


def _correct(acc: float, key: str, n: int = 200) -> list[int]:
    """``n`` per-prompt outcomes, a fraction ``acc`` of them right, in a seeded order."""
    out = [1] * round(acc * n) + [0] * (n - round(acc * n))
    random.Random(key).shuffle(out)
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    result = _synthetic_run(tmp_path_factory.mktemp("report") / "run")
    result.write_tables()
    return write_report(result)


def _setup(report: Path) -> str:
    return (report.parent / TASK / "setup.json").read_text()


def _section(html: str, section_id: str) -> str:
    start = html.index(f"id='{section_id}'")
    end = html.find("<section id=", start + 1)
    return html[start : end if end > 0 else len(html)]


def test_report_content(report: Path) -> None:
    html = report.read_text()
    ids = ["summary", "results-table", f"{TASK}-circuit", f"{TASK}-mapping"]
    ids += [f"{TASK}-ablation", f"{TASK}-curves"]
    for section_id in ids:
        assert f"id='{section_id}'" in html, section_id
    assert "<title>Circuit distillation: entity tracking</title>" in html
    run = _section(html, "run")
    for word in ("zoo:entity-tracking-teacher", "zoo:entity-tracking-student", "4×8 (4)"):
        assert word in run
    assert f"<dd>{__version__}</dd>" in run and "0, 1 (task seed 0)" in run
    table = _section(html, "results-table")
    assert not re.search(r"\bnan\b", table, re.IGNORECASE)
    assert "0.755 ± 0.007" in table and "25.0% / 3.1%" in table and "+1.0" in table
    assert "0.300 → 0.500 ± 0.000" in table and "4 (1/2)" in table and "never (0/2)" in table
    assert "test accuracy (mean ± sd)" in table
    teacher_row = table[table.index("<td class=text>teacher</td>") :].split("</tr>")[0]
    assert "never" not in teacher_row and "—" in teacher_row  # references have no target
    circuit = _section(html, f"{TASK}-circuit")
    assert "title='L3H1: group A at last'" in circuit and "group <b>" not in circuit
    assert "<b>group B</b> at position <code>query_label</code>: L1H4" in circuit
    assert "faithfulness 0.910" in circuit and "nan" not in circuit.lower()
    mapping = _section(html, f"{TASK}-mapping")
    assert "<svg" in mapping and ">student</text>" in mapping and ">teacher</text>" in mapping
    assert "L1H2 → L3H1" in mapping and "random control, seed 1: L0H3 → L2H0" in mapping
    assert "teacher (teacher)" not in html and "student (student)" not in html
    # each pair's impacts with science's bootstrap intervals; none at a screened-out head
    assert "ΔP student [95% interval]" in mapping and "1000 resamples" in mapping
    s_sweep = AblationResult.from_dict(json.loads(_setup(report))["student_sweep"])
    d, lo, hi = (float(x) for x in (s_sweep.delta[1, 2], *s_sweep.delta_ci[:, 1, 2]))
    assert f"{d:.4f} [{lo:.4f}, {hi:.4f}]" in mapping
    assert "(estimated)" in mapping and not re.search(r"\bnan\b", mapping, re.IGNORECASE)
    for section_id in ("seed-comparisons", "formats-table", "mcnemar-table", "cka-table"):
        extra = _section(html, section_id)
        assert "<table" in extra and not re.search(r"\bnan\b", extra, re.IGNORECASE)
    pooled = _section(html, "mcnemar-table")
    assert "McNemar (pooled prompts; not seed-level)" in pooled and "not a valid test" in pooled
    assert "p (pooled prompts; not seed-level)" in pooled
    assert "L1H2 → L3H1" in _section(html, "cka-table")
    curves = _section(html, f"{TASK}-curves")
    assert '"name":"CE + Align CKA"' in curves and "condition (mean \\u00b1 sd over" in curves


def test_report_shows_learning_curves_and_their_area(report: Path) -> None:
    html = report.read_text()
    table = _section(html, "results-table")
    assert "val AUC" not in table  # the table is as wide as the page holds: in the figure
    # CE's curves: (0.73, 0.75) and (0.74, 0.76) over steps 2..4: AUC 0.74 and 0.75
    assert "AUC 0.745" in _section(html, f"{TASK}-learning")
    learning = _section(html, f"{TASK}-learning")
    assert "◆ the kept step" in learning
    assert "kept step 4" in learning  # ce+align records it; the others mark their last step
    for words in ("lr 0.0002", "AUC 0.755", "test 0.765"):  # ce+align's panel title
        assert words in learning


def test_report_leads_with_the_answer(report: Path) -> None:
    """The page's first section, before any table, is the forest plot of each condition
    against CE and under it each comparison's verdict, as ``comparisons()`` gives them."""
    html = report.read_text()
    comp = ExperimentResult.load(report.parent).comparisons()
    assert html[html.index("<section") :].startswith("<section id='answer'>")
    assert html.index(f'id="{TASK}-forest-figure"') < html.index("<table")
    answer = _section(html, "answer")
    under = answer[answer.index(f'id="{TASK}-forest-figure"') :]
    assert list(comp.A) == ["CE + Align CKA", "CE + Rand CKA"] and len(comp.verdict) == 2
    for verdict in comp.verdict:
        assert f"<li>{htmllib.escape(verdict, quote=True)}</li>" in under
    assert "the interval contains 0 and +0.05: undecided" in under
    assert "[exploratory] CE + Rand CKA" in under  # not in the declared primary family
    # whole labels; a row outside the primary family says so
    assert '"ticktext":["CE + Align CKA","CE + Rand CKA (exploratory)"]' in under
    # 2 seeds cannot reject: the run is labelled exploratory before the figure, with why
    lead = answer[: answer.index(f'id="{TASK}-forest-figure"')]
    assert "<b>Exploratory run.</b> design: 2 seed(s) cannot reject" in lead


def test_forest_plot_draws_each_comparison(report: Path) -> None:
    """Means, intervals and per-seed dots are the comparisons' numbers; the line at 0; one
    seed draws no interval; a task with nothing to compare is refused by name."""
    from circuitlens.report.figures import plot_forest

    result = ExperimentResult.load(report.parent)
    comp = result.comparisons()
    fig = plot_forest(result, TASK)
    ci, seeds, means = fig.data
    assert list(means.x) == pytest.approx(list(comp.mean_diff)) and list(means.y) == [0, 1]
    assert list(ci.x) == [comp.ci_low[0], comp.ci_high[0], None, comp.ci_low[1],
                          comp.ci_high[1], None]  # fmt: skip
    assert list(seeds.x) == pytest.approx([d for ds in comp.diffs for d in ds])
    assert list(seeds.y) == pytest.approx([0.22, 0.22, 1.22, 1.22])
    assert list(fig.layout.yaxis.ticktext) == ["CE + Align CKA", "CE + Rand CKA (exploratory)"]
    assert fig.layout.yaxis.automargin and fig.layout.width == 800
    assert [(s.x0, s.x1) for s in fig.layout.shapes] == [(0, 0)]
    one = ExperimentResult(
        result.directory, result.config, result.setups, [c for c in result.cells if c.seed == 0]
    )
    (only,) = [t.name for t in plot_forest(one, TASK).data if t.mode == "lines"] or [None]
    assert only is None  # no interval from one seed
    with pytest.raises(ValueError, match="theory_of_mind.*nothing to compare"):
        plot_forest(result, "theory_of_mind")


def test_report_loads_plotly_from_one_file_beside_it(report: Path, tmp_path: Path) -> None:
    """The page is small: plotly.js is one file beside it (``plotly.min.js``), loaded once in
    the head by its relative name, written only when absent or different."""
    import plotly.offline

    html = report.read_text()
    assert report.stat().st_size < 1.5e6
    assert html.count('<script src="plotly.min.js">') == 1
    assert html.index('<script src="plotly.min.js">') < html.index("</head>")
    assert html.count("<script") == 6  # PlotlyConfig and plotly.js, then one per figure (4)
    assert html.count(" src=") == 1
    js = plotly.offline.get_plotlyjs().encode("utf-8")
    assert (report.parent / PLOTLY_JS).read_bytes() == js and js[:200] not in html.encode()
    asset = write_plotly_js(tmp_path)
    before = asset.stat().st_mtime_ns
    os.utime(asset, ns=(before - 10**9, before - 10**9))
    assert write_plotly_js(tmp_path) == asset and asset.stat().st_mtime_ns == before - 10**9
    asset.write_bytes(js[: len(js) // 2])  # a different file (half of it): written again
    write_plotly_js(tmp_path)
    assert asset.read_bytes() == js
    assert sorted(p.name for p in tmp_path.iterdir()) == [PLOTLY_JS]  # no temporary left


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


#: appended to a copy of the page: once Plotly has drawn, what the browser laid out, as JSON
MEASURE = """<script>window.addEventListener('load', () => setTimeout(() => {
  const box = e => e.getBoundingClientRect();
  const within = (t, svg) => { const b = box(t), s = box(svg);
    return [t.textContent, b.left >= s.left - 0.5 && b.right <= s.right + 0.5
            && b.top >= s.top - 0.5 && b.bottom <= s.bottom + 0.5 && b.left >= 0
            && b.right <= document.documentElement.clientWidth, b.width > 0]; };
  const texts = (id, sel) => [...document.querySelectorAll(`#${id} ${sel}`)].map(
    t => within(t, t.closest('svg')));
  const out = {
    legend: texts('entity_tracking-curves-figure', '.legendtext'),
    forest: texts('entity_tracking-forest-figure', '.ytick text'),
    tables: [...document.querySelectorAll('.scroll')].map(
      e => [e.closest('section').id, e.scrollWidth, e.clientWidth]),
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
  };
  const pre = document.createElement('pre');
  pre.id = 'measured'; pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
}, 2000));</script></body>"""


def test_report_loads_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    assert _chromium(), "chromium is not installed: bash scripts/setup.sh installs it (apt-get)"
    """The page (with a measuring script appended) loads without a console message; at
    1200 px every figure is drawn, the curves' legend and the forest plot's labels are whole
    (each text's box inside its figure and the window) and no table scrolls sideways."""
    page = report.parent / "measured.html"
    page.write_text(report.read_text().replace("</body>", MEASURE))
    proc = subprocess.run(
        [
            _chromium(),
            "--window-size=1200,900",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)  # the page logs nothing: no errors, no warnings
    dom = proc.stdout
    for section_id in ("summary", "results-table", f"{TASK}-circuit", f"{TASK}-mapping"):
        assert f'id="{section_id}"' in dom, section_id
    assert 'id="answer"' in dom
    # Plotly ran: each figure's div now holds its rendered SVG
    for figure in (f"{TASK}-forest-figure", f"{TASK}-ablation-figure", f"{TASK}-curves-figure"):
        start = dom.index(f'id="{figure}"')
        assert "main-svg" in dom[start : start + 20000], figure
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the measuring script did not run"
    measured = json.loads(htmllib.unescape(found.group(1)))
    labels = {"CE", "CE + Align CKA", "CE + Rand CKA"}
    assert {text for text, _, _ in measured["legend"]} == labels  # every entry, untruncated
    assert all(inside and shown for _, inside, shown in measured["legend"]), measured["legend"]
    forest = ["CE + Align CKA", "CE + Rand CKA (exploratory)"]
    assert [t for t, _, _ in measured["forest"]] == forest
    assert all(inside and shown for _, inside, shown in measured["forest"]), measured["forest"]
    assert [s for s, _, _ in measured["tables"]][:2] == ["results-table", "seed-comparisons"]
    wide = [(s, w, c) for s, w, c in measured["tables"] if w > c]
    assert not wide, wide  # no table scrolls sideways at 1200 px
    assert measured["page"][0] <= measured["page"][1]


def test_experiment_result_prints_short(report: Path) -> None:
    text = repr(ExperimentResult.load(report.parent))
    assert text.startswith("ExperimentResult(") and "6/6 cells done" in text and len(text) < 300


def test_a_degenerate_map_is_shown_first() -> None:
    """The committed real SmolLM2 run, re-read: its map's degenerate-assignment warning (found
    again from the saved sweeps) is on the page, in bold, before the other warnings."""
    from circuitlens.distill.setup import Setup
    from circuitlens.report.page import _task_section

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    doc = json.loads((results / "reproduce-real-exact.json").read_text())
    setup = Setup.from_dict(doc["setups"]["entity_tracking"])
    cfg = ExperimentConfig(tasks=("entity_tracking",), conditions=("ce",), seeds=(0,))
    result = ExperimentResult(results, cfg, {"entity_tracking": setup}, [])
    html = "".join(_task_section(result, "entity_tracking", setup))
    mapping = _section(html, "entity_tracking-mapping")
    bold = mapping.index("<b>⚠ degenerate assignment")
    assert bold < mapping.index("⚠ student head(s)")
    assert "closest ablation impact" in mapping


@pytest.mark.parametrize(
    ("export", "label"),
    [("reproduce-real-exact", "|ΔP_s − ΔP_t|"), ("answer-entity-tracking", "weights-ov-qk cost")],
)
def test_a_map_names_the_cost_that_chose_its_pairs(export: str, label: str) -> None:
    """The impact map's distances are |ΔP_s − ΔP_t|; a weight-space map's are its own cost, and
    the page and the tables say which (not an impact difference it is not)."""
    from circuitlens.distill.setup import Setup
    from circuitlens.experiments.tables import _head_maps_markdown
    from circuitlens.report.html import pairs_table_html

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    setup = Setup.from_dict(
        json.loads((results / f"{export}.json").read_text())["setups"]["entity_tracking"]
    )
    page = pairs_table_html(setup.head_map, setup.student_sweep, setup.teacher_sweep)
    lines = _head_maps_markdown({"entity_tracking": setup})
    (other,) = {"|ΔP_s − ΔP_t|", "weights-ov-qk cost"} - {label}
    for text in (htmllib.unescape(page), "\n".join(lines)):
        assert label in text and other not in text
