"""Interactive Plotly figures built from result types only (compute never imports this module).

``plot_ablation(teacher_sweep, student_sweep, head_map)``: the two impact heatmaps side by side
(layer x head, one diverging colour scale centred at zero and shared by both), hover with the
head name, P and dP, and the mapped pairs marked with the same number in both panels; hovering
a marked student head names its teacher partner. ``fig.write_html(path)`` saves a standalone
page; in Jupyter the figure displays itself.

``plot_forest(result, task)``: each trained condition's paired difference in test accuracy to
CE, the seed as the unit (mean, 95% interval, one dot per seed), from
``ExperimentResult.comparisons()``.

``plot_learning_curves(result, task)``: each condition's validation accuracy over steps, one
panel per condition and one line per seed, the kept step of each seed marked, with the
condition's learning rate and area under the curve in the panel's title.
"""

from __future__ import annotations

from typing import Any

from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import HeadMap
from circuitlens.distill.conditions import BASELINE, LABELS


def _hover(sweep: AblationResult) -> list[list[str]]:
    n_layers, n_heads = sweep.delta.shape
    return [
        [
            f"L{layer}H{h}<br>P ablated = {float(sweep.p_ablated[layer, h]):.3f}"
            f"<br>dP = {float(sweep.delta[layer, h]):+.3f}"
            for h in range(n_heads)
        ]
        for layer in range(n_layers)
    ]


def _role(role: str, sweep: AblationResult) -> str:
    """``teacher`` or ``teacher <name>``: the name only where it says more than the role."""
    name = sweep.model_name
    return role if name in ("", "model", role) else f"{role} {name}"


def _pair_markers(head_map: HeadMap, pick: int, partner: int, who: str) -> Any:
    """The map's heads of one model (``pick``: 0 teacher, 1 student) as numbered squares,
    each hovering its partner (``who``) and the pair's distance."""
    import plotly.graph_objects as go

    heads = [pair[pick] for pair in head_map.pairs]
    others = [pair[partner] for pair in head_map.pairs]
    distances = head_map.distances or [0.0] * len(heads)
    return go.Scatter(
        x=[h.head for h in heads],
        y=[h.layer for h in heads],
        mode="markers+text",
        text=[str(i + 1) for i in range(len(heads))],
        textfont={"color": "black"},
        marker={"size": 22, "symbol": "square-open", "color": "black", "line": {"width": 2}},
        customdata=[
            f"pair {i + 1}: {h} <-> {who} {o}<br>distance {d:.3f}"
            for i, (h, o, d) in enumerate(zip(heads, others, distances, strict=True))
        ],
        hovertemplate="%{customdata}<extra></extra>",
        showlegend=False,
        name=f"mapped ({head_map.kind})",
    )


def plot_ablation(
    teacher_sweep: AblationResult,
    student_sweep: AblationResult,
    head_map: HeadMap | None = None,
    title: str | None = None,
) -> Any:
    """Side-by-side dP heatmaps of teacher and student, with the head map's pairs marked.

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sweeps = (teacher_sweep, student_sweep)
    bound = max(float(s.delta.abs().max()) for s in sweeps) or 1.0
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=[
            f"{_role('teacher', s)}: P = {s.p_own:.3f}"
            + ("" if s.p_baseline == s.p_own else f", baseline P = {s.p_baseline:.3f}")
            if i == 0
            else f"{_role('student', s)}: P = {s.p_own:.3f}"
            for i, s in enumerate(sweeps)
        ],
    )
    for col, sweep in enumerate(sweeps, start=1):
        n_layers, n_heads = sweep.delta.shape
        fig.add_trace(
            go.Heatmap(
                z=sweep.delta.tolist(),
                x=list(range(n_heads)),
                y=list(range(n_layers)),
                zmin=-bound,
                zmax=bound,
                zmid=0,
                colorscale="RdBu_r",
                text=_hover(sweep),
                hovertemplate="%{text}<extra></extra>",
                colorbar={"title": f"dP ({sweep.config.metric})"},
                showscale=col == 2,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed", row=1, col=col)
    if head_map is not None and len(head_map):
        for col, pick, partner, who in ((1, 1, 0, "student"), (2, 0, 1, "teacher")):
            fig.add_trace(_pair_markers(head_map, pick, partner, who), row=1, col=col)
    fig.update_layout(
        title=title
        or f"Mean-ablation impact dP per head ({teacher_sweep.config.metric})"
        + (f"; {len(head_map)} mapped pairs ({head_map.kind})" if head_map else ""),
        height=420,
        width=1000,
    )
    return fig


def _outline(fig: Any, heads: list, **where: Any) -> None:
    for h in heads:
        fig.add_shape(
            type="rect",
            x0=h.head - 0.5,
            x1=h.head + 0.5,
            y0=h.layer - 0.5,
            y1=h.layer + 0.5,
            line={"color": "black", "width": 3},
            **where,
        )


def plot_patching(result: Any, circuit: Any = None, title: str | None = None) -> Any:
    """Layer x head heatmap of a patching result (``[layer, head]`` scores), diverging colours
    centred at zero, hover with head name and score, circuit heads outlined.

    ``result`` is a :class:`~circuitlens.circuits.PatchingResult` (per-position scores are
    summed over positions) or a path-patching result (scores placed at their senders).
    """
    import plotly.graph_objects as go
    import torch

    if hasattr(result, "senders"):  # path patching: one score per sender
        n_layers = max(h.layer for h in result.senders) + 1
        n_heads = max(h.head for h in result.senders) + 1
        grid = torch.full((n_layers, n_heads), float("nan"))
        for h, s in zip(result.senders, result.scores.tolist(), strict=True):
            grid[h.layer, h.head] = s
        label = f"path patching via {result.via} at {result.position}"
    else:
        grid = result.scores if result.scores.ndim == 2 else result.scores.sum(-1)
        label = f"activation patching of {result.config.component}"
    bound = float(grid.nan_to_num().abs().max()) or 1.0
    n_layers, n_heads = grid.shape
    text = [
        [f"L{layer}H{h}: {float(grid[layer, h]):+.4f}" for h in range(n_heads)]
        for layer in range(n_layers)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=grid.tolist(),
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorscale="RdBu_r",
            text=text,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    if circuit is not None:
        _outline(fig, circuit.heads)
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed")
    fig.update_layout(title=title or label, height=420, width=560)
    return fig


def plot_circuit(circuit: Any, n_layers: int, n_heads: int, title: str | None = None) -> Any:
    """The circuit's heads on the layer x head grid, coloured by group, hover naming the group
    and the position it acts at."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for group, heads in circuit.groups.items():
        if not heads:
            continue
        pos = circuit.positions.get(group, "last")
        fig.add_trace(
            go.Scatter(
                x=[h.head for h in heads],
                y=[h.layer for h in heads],
                mode="markers+text",
                text=[f"{group}" for _ in heads],
                name=f"{group} @ {pos}",
                marker={"size": 26, "symbol": "square"},
                textfont={"color": "white"},
                customdata=[f"{h} - group {group} at {pos}" for h in heads],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="head", range=[-0.5, n_heads - 0.5], dtick=1)
    fig.update_yaxes(title_text="layer", range=[n_layers - 0.5, -0.5], dtick=1)
    faith = circuit.meta.get("faithfulness")
    fig.update_layout(
        title=title or ("circuit" + (f" (faithfulness {faith:.2f})" if faith is not None else "")),
        height=420,
        width=560,
    )
    return fig


def _forest_hover(r: Any) -> str:
    """The hover text of one comparison's point: its difference, interval and p's."""

    def num(x: Any, fmt: str) -> str:
        return "—" if x is None or x != x else format(float(x), fmt)

    return (
        f"{r.A} − {r.B}: {num(r.mean_diff, '+.3f')} over {r.n_seeds} seed(s)"
        f"<br>95% CI {num(r.ci_low, '+.3f')} to {num(r.ci_high, '+.3f')}"
        f"<br>sign-flip p = {num(r.p_sign_flip, '.2g')}, Holm p = {num(r.p_holm, '.2g')}"
        f" ({r.role})<br>power at the effect of interest {num(r.power, '.2g')}"
    )


def _forest_traces(comp: Any) -> list[Any]:
    """The forest plot's three traces: the intervals, the seeds' dots, the means (row i at
    y = i, the seeds just below it)."""
    import plotly.graph_objects as go

    traces = []
    with_ci = [i for i, r in comp.iterrows() if r.ci_low == r.ci_low and r.ci_high == r.ci_high]
    if with_ci:  # one seed has no interval
        traces.append(
            go.Scatter(
                x=[x for i in with_ci for x in (comp.ci_low[i], comp.ci_high[i], None)],
                y=[y for i in with_ci for y in (i, i, None)],
                mode="lines",
                line={"color": "#0072B2", "width": 3},
                name="95% interval (seeds × prompts bootstrap)",
                hoverinfo="skip",
            )
        )
    seeds = [(i, s, d) for i, r in comp.iterrows() for s, d in zip(r.seeds, r.diffs, strict=True)]
    traces.append(
        go.Scatter(
            x=[d for _, _, d in seeds],
            y=[i + 0.22 for i, _, _ in seeds],
            mode="markers",
            marker={"size": 7, "color": "#E69F00", "line": {"width": 1, "color": "#555"}},
            name="one seed",
            text=[f"{comp.A[i]}, seed {s}: {d:+.3f}" for i, s, d in seeds],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    traces.append(
        go.Scatter(
            x=list(comp.mean_diff),
            y=list(range(len(comp))),
            mode="markers",
            marker={"size": 13, "symbol": "diamond", "color": "#0072B2"},
            name="mean over seeds",
            text=[_forest_hover(r) for r in comp.itertuples()],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    return traces


def plot_forest(result: Any, task: str, comparisons: Any = None, title: str | None = None) -> Any:
    """Forest plot of each condition's paired difference in test accuracy to CE, for one task.

    Per condition (one row, its whole label on the left): a diamond at the mean over seeds of
    its accuracy minus CE's, a horizontal line for the 95% two-way (seeds x prompts) bootstrap
    interval, and one small dot per seed (that seed's difference) just below; a dashed vertical
    line at 0. Read from :meth:`~circuitlens.experiments.ExperimentResult.comparisons`.

    Args:
        result: an :class:`~circuitlens.experiments.ExperimentResult`.
        task: the task to plot.
        comparisons: ``result.comparisons()``, if already made.
        title: the figure's title (default: the task and what is plotted).

    Returns:
        A ``plotly.graph_objects.Figure``, 800 px wide.

    Raises:
        ValueError: if no condition of ``task`` shares a seed with CE.
    """
    import plotly.graph_objects as go

    comp = result.comparisons() if comparisons is None else comparisons
    comp = comp[comp.task == task].reset_index(drop=True)
    if comp.empty:
        raise ValueError(f"no condition of task {task!r} shares a seed with the baseline: "
                         "nothing to compare")  # fmt: skip
    base = LABELS[BASELINE]
    fig = go.Figure(_forest_traces(comp))
    fig.add_vline(x=0, line_dash="dash", line_color="#555")
    fig.update_yaxes(
        tickvals=list(range(len(comp))),
        ticktext=[
            (a if b == base else f"{a} − {b}") + ("" if role == "primary" else " (exploratory)")
            for a, b, role in zip(comp.A, comp.B, comp.role, strict=True)
        ],
        range=[len(comp) - 0.5, -0.6],
        automargin=True,
        showgrid=False,
        tickfont={"size": 13},
    )
    fig.update_xaxes(
        title_text=f"test accuracy minus {base}'s (per seed, then mean)", zeroline=False
    )
    fig.update_layout(
        title=title or f"{task.replace('_', ' ')}: each condition against {base}",
        width=800,
        height=190 + 62 * len(comp),
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"},
        margin={"t": 90, "b": 60, "r": 30},
        plot_bgcolor="white",
    )
    return fig


def plot_training_curves(result: Any, task: str, title: str | None = None) -> Any:
    """Validation accuracy, mean CKA of the mapped pairs and training loss against training
    steps, one line per condition (mean over seeds, error bars: std), from an
    :class:`~circuitlens.experiments.ExperimentResult`; the dotted line is CE's final
    validation accuracy (the convergence target), the dashed one the teacher's test accuracy."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from circuitlens.distill.conditions import LABELS

    df = result.curves()
    df = df[df.task == task]
    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.07,
        subplot_titles=[
            "validation accuracy",
            "mean CKA of the mapped pairs (validation)",
            "training loss (mean since the last evaluation)",
        ],
    )
    palette = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7")
    colors = {
        c: palette[i % len(palette)] for i, c in enumerate(c for c in LABELS if c != "student")
    }
    for condition, sub in df.groupby("condition", sort=False):
        for col, key in ((1, "val_accuracy"), (2, "val_cka"), (3, "loss")):
            if key not in sub or sub[key].isna().all():
                continue
            g = sub.groupby("step")[key]
            mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
            fig.add_trace(
                go.Scatter(
                    x=mean.index,
                    y=mean.values,
                    error_y={"type": "data", "array": std.values, "visible": True},
                    mode="lines+markers",
                    name=LABELS.get(condition, condition),
                    legendgroup=condition,
                    showlegend=col == 1,
                    line={"color": colors.get(condition)},
                ),
                row=1,
                col=col,
            )
    target = result.target(task)
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", row=1, col=1, annotation_text="CE final")
    setup = result.setups.get(task)
    if setup is not None:
        fig.add_hline(
            y=setup.teacher_accuracy, line_dash="dash", row=1, col=1, annotation_text="teacher"
        )
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_yaxes(title_text="mean CKA (mapped pairs)", row=1, col=2)
    fig.update_yaxes(title_text="training loss", row=1, col=3)
    fig.update_layout(  # no fixed width: the figure fills its page; the legend below, whole
        title=title or f"{task}: training curves",
        height=520,
        legend={
            "title": {"text": "condition (mean ± sd over seeds)", "side": "top"},
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": -0.2,
            "yanchor": "top",
        },
        margin={"b": 40},
    )
    return fig


def _learning_panel_title(cells: list[Any], label: str) -> str:
    """A learning-curve panel's title: the condition, its lr(s), mean val AUC and test
    accuracy over its seeds."""
    lrs = sorted({c.lr for c in cells if c.lr is not None})
    aucs = [c.val_auc for c in cells if c.val_auc is not None]
    parts = [label]
    if lrs:
        parts.append("lr " + ", ".join(f"{x:.3g}" for x in lrs))
    if aucs:
        parts.append(f"AUC {sum(aucs) / len(aucs):.3f}")
    parts.append(f"test {sum(c.accuracy for c in cells) / len(cells):.3f}")
    return " · ".join(parts)


def plot_learning_curves(result: Any, task: str, title: str | None = None, cols: int = 3) -> Any:
    """Validation accuracy over training steps, one panel per trained condition of ``task``
    and one line per seed (step 0: the untrained student), each seed's kept step (the weights
    measured: the best validation evaluation's with ``patience``, else the last) marked with a
    diamond; each panel's title gives the condition's lr, its mean area under the
    validation curve (:attr:`~circuitlens.experiments.cell.Cell.val_auc`) and its mean test
    accuracy, so speed and final accuracy read side by side. Cells written before the kept step
    was recorded mark their last step.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Raises:
        ValueError: ``task`` has no trained cell.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from circuitlens.distill.conditions import LABELS

    cells = [c for c in result.cells if c.task == task and c.curve]
    if not cells:
        raise ValueError(f"no trained cell of task {task!r} has a validation curve")
    conditions = list(dict.fromkeys(c.condition for c in cells))
    by = {
        c: sorted((x for x in cells if x.condition == c), key=lambda x: x.seed) for c in conditions
    }
    cols = max(1, min(cols, len(conditions)))
    rows = -(-len(conditions) // cols)
    labels = {c: LABELS.get(c, c) for c in conditions}
    fig = make_subplots(
        rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04,
        vertical_spacing=0.18 / max(1, rows - 1) if rows > 1 else 0.0,
        subplot_titles=[_learning_panel_title(by[c], labels[c]) for c in conditions],
    )  # fmt: skip
    setup = result.setups.get(task)
    start = None if setup is None else setup.student_val_accuracy
    for i, c in enumerate(conditions):
        row, col = i // cols + 1, i % cols + 1
        for j, cell in enumerate(by[c]):
            color = _PALETTE[j % len(_PALETTE)]
            points = [(int(p["step"]), float(p["val_accuracy"])) for p in cell.curve]
            if start is not None and start == start:  # NaN: no validation split
                points = [(0, float(start)), *points]
            xs, ys = zip(*points, strict=True)
            name = f"seed {cell.seed}"
            fig.add_trace(
                go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name,
                           showlegend=i == 0, line={"color": color, "width": 1.5},
                           hovertemplate=f"{labels[c]}, {name}<br>step %{{x}}: %{{y:.3f}}"
                           "<extra></extra>"),
                row=row, col=col,
            )  # fmt: skip
            kept = cell.kept_step if cell.kept_step is not None else cell.steps
            at = [a for s, a in points if s == kept]
            if at:
                fig.add_trace(
                    go.Scatter(x=[kept], y=[at[0]], mode="markers", legendgroup=name,
                               showlegend=False, marker={"symbol": "diamond", "size": 10,
                                                         "color": color,
                                                         "line": {"width": 1, "color": "black"}},
                               hovertemplate=f"{labels[c]}, {name}<br>kept step {kept}: "
                               f"{at[0]:.3f}<extra></extra>"),
                    row=row, col=col,
                )  # fmt: skip
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="validation accuracy", col=1)
    fig.update_layout(
        title=title or f"{task}: validation accuracy per condition (◆ the kept step)",
        height=180 + 300 * rows,
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.12, "yanchor": "top"},
        margin={"b": 60},
        plot_bgcolor="white",
    )
    return fig


def plot_sweep(result: Any, task: str, title: str | None = None) -> Any:
    """The curves of a sweep (:class:`~circuitlens.experiments.curves.SweepResult`) for one
    task: accuracy over the swept value (lambda on a log axis, or the budget), one line per
    condition with its 95% seed interval; for a lambda sweep also accuracy against the pairs'
    held-out CKA after training (each point one lambda: the accuracy/CKA frontier).

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from circuitlens.distill.conditions import LABELS

    df = result.frame()
    df = df[df.task == task]
    if df.empty:
        raise ValueError(f"the sweep has no cells of task {task!r}")
    knob = result.knob
    lam = knob == "lam"
    names = {"lam": "lambda (CKA weight)", "budget": "budget (student heads)"}
    titles = [f"accuracy over {names[knob]}"] + (["accuracy against held-out CKA"] if lam else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    for i, (condition, sub) in enumerate(df.groupby("condition", sort=False)):
        sub = sub.sort_values(knob)
        color = _PALETTE[i % len(_PALETTE)]
        label = LABELS.get(condition, condition)
        err = {"type": "data", "symmetric": False, "array": sub.ci_high - sub.accuracy,
               "arrayminus": sub.accuracy - sub.ci_low}  # fmt: skip
        fig.add_trace(
            go.Scatter(x=sub[knob], y=sub.accuracy, error_y=err, mode="lines+markers",
                       name=label, legendgroup=label, line={"color": color}),
            row=1, col=1,
        )  # fmt: skip
        if lam:
            fig.add_trace(
                go.Scatter(x=sub.cka_after, y=sub.accuracy, mode="markers+text",
                           text=[f"{v:g}" for v in sub[knob]], textposition="top center",
                           name=label, legendgroup=label, showlegend=False,
                           marker={"color": color}),
                row=1, col=2,
            )  # fmt: skip
    fig.update_xaxes(title_text=names[knob], type="log" if lam else "linear", row=1, col=1)
    if lam:
        fig.update_xaxes(title_text="held-out CKA of the pairs after training", row=1, col=2)
    fig.update_yaxes(title_text="test accuracy", row=1, col=1)
    fig.update_layout(
        title=title or f"{task}: the curve over {names[knob]}",
        legend={"orientation": "h", "y": -0.25},
        margin={"b": 120},
    )
    return fig


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
