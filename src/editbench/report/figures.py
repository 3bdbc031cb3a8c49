"""Figures (matplotlib ``Figure`` objects, no pyplot state): metrics against N per setting, cost
against N, calibration heat-maps and Pareto fronts.

Style, the same in every figure: one colour per method family (HoReN-LoRA and HoReN w/o norm
take HoReN's red, GRACE+Norm GRACE's blue); within a family each series -- a variant method or
another hyper-parameter setting -- has its own dash and marker, the family's own method solid
with circles; a method's published numbers are dotted with its marker hollow.  Legends sit
outside the axes, N axes are logarithmic, every measured checkpoint has a marker (a run that
stopped early ends at its last one), a metric's 95 % bootstrap interval over cases is a shaded band
in the series' colour (a series without any is labelled "(no CI)"), and cost plots leave the
unedited model out (it makes no edits; its ~0 s per edit would stretch the time axis), saying so
in their title.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath
from matplotlib.ticker import NullLocator

from editbench.report.baselines import table_rank
from editbench.report.intervals import CONFIDENCE, ci_columns
from editbench.report.rows import (METRIC_NAMES, OVERALL, REFERENCE_METHODS, UNKNOWN_DEVICE, devices, display_name,
                                   final_configs, metric_names, ordered_labels, setting_text)

METHOD_COLORS = {
    "HoReN": "#d62728", "GRACE": "#1f77b4", "WISE": "#2ca02c", "AlphaEdit": "#9467bd",
    "UltraEdit": "#ff7f0e", "ROME": "#8c564b", "REPAIR": "#393b79", "FT-L": "#7f7f7f",
    "UnKE": "#17becf", "Unedited": "#000000",
}
FALLBACK_COLORS = ["#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                   "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7969c"]
# Methods drawn in another method's colour (a variant of it); names not listed here join a family
# by prefix ("HoReN-XL" -> HoReN).
FAMILIES = {"GRACE+Norm": "GRACE", "HoReN w/o norm": "HoReN", "HoReN-LoRA": "HoReN"}
# (dash, marker) of a family's 1st, 2nd, ... series; dotted is kept for published numbers.
VARIANT_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), ((0, (6, 1.5, 1, 1.5, 1, 1.5)), "D"),
                  ((0, (9, 2.5)), "v"), ((0, (3, 1, 1, 1)), "P"), ((0, (1, 2, 5, 2)), "X")]
PUBLISHED_LINESTYLE = ":"
# mem_device -> [(cost column, panel title)]; other values (unknown, or several devices in one
# figure) get NEUTRAL_MEMORY, and the panel titles say which.
MEMORY_PANELS = {
    "cuda": [("peak_mem_gb", "CUDA memory: peak allocated over all devices"),
             ("resident_mem_gb", "CUDA memory: allocated at the checkpoint")],
    "cpu": [("resident_mem_gb", "CPU memory: resident set"),
            ("mem_growth_gb", "CPU memory: growth over the unedited model")],
}
NEUTRAL_MEMORY = [("peak_mem_gb", "peak memory"), ("resident_mem_gb", "resident memory")]
LEGEND_FONTSIZE = 8
LEGEND_HANDLE = 3.5  # legend line samples, in font sizes: long enough to show a dash pattern
TITLE_FONTSIZE = 9
FRACTION_LIMITS = (-0.03, 1.03)  # a fraction's axis: a line at exactly 0 or 1 stays visible off the frame
MAX_N_TICKS = 6  # up to this many distinct N: one labelled tick per measured N
_TEXT = TextToPath()  # measures legend labels


# --------------------------------------------------------------------------------------- styles

def method_family(method: str) -> str:
    """The method whose colour ``method`` is drawn in: itself, or the method it is a variant of
    (:data:`FAMILIES`, or a known method followed by "-", "+" or " ")."""
    if method in FAMILIES:
        return FAMILIES[method]
    for base in sorted(METHOD_COLORS, key=len, reverse=True):
        if method != base and method.startswith(base) and method[len(base)] in "-+ ":
            return base
    return method


def method_color(method: str) -> str:
    """Fixed colour of the method's family; a stable hash-picked colour for any other name."""
    family = method_family(method)
    if family in METHOD_COLORS:
        return METHOD_COLORS[family]
    digest = int(hashlib.md5(family.encode()).hexdigest(), 16)
    return FALLBACK_COLORS[digest % len(FALLBACK_COLORS)]


@dataclass
class Series:
    """One measured line: a label's aggregated rows sorted by N, and how it is drawn."""

    method: str
    label: str
    rows: pd.DataFrame
    color: str
    linestyle: object
    marker: str


def series(agg: pd.DataFrame) -> list[Series]:
    """One :class:`Series` per label, in table order.  Within a family, the family's own method
    takes the first variant style (solid, circles), its other labels and variant methods the next
    ones in table order."""
    labels = ordered_labels(agg)
    rank = {pair: i for i, pair in enumerate(labels)}
    variant: dict[tuple[str, str], int] = {}
    counters: dict[str, int] = {}
    for method, label in sorted(labels, key=lambda p: (method_family(p[0]) != p[0], rank[p])):
        family = method_family(method)
        variant[(method, label)] = counters.get(family, 0)
        counters[family] = variant[(method, label)] + 1
    out = []
    for method, label in labels:
        linestyle, marker = VARIANT_STYLES[variant[(method, label)] % len(VARIANT_STYLES)]
        out.append(Series(method, label, agg[agg["label"] == label].sort_values("N"), method_color(method),
                          linestyle, marker))
    return out


NO_CI_LABEL = " (no CI)"  # appended to a metric series' legend label when none of its points has an interval
BAND_ALPHA = 0.15


def _has_interval(s: Series, metrics) -> bool:
    """Whether any point of the series has a confidence interval for any of ``metrics``."""
    return any(ci_columns(m)[0] in s.rows and s.rows[ci_columns(m)[0]].notna().any() for m in metrics)


def _metric_labels(styled: list[Series], metrics) -> dict[str, str]:
    """Legend label of each series of a metric figure: marked "(no CI)" when it has no interval."""
    return {s.label: s.label if _has_interval(s, metrics) else s.label + NO_CI_LABEL for s in styled}


def _plot_measured(ax, styled: list[Series], column: str, scale: float = 1.0,
                   labels: dict[str, str] | None = None) -> None:
    """Each series' line; its confidence interval (when the rows have one) as a shaded band."""
    low, high = ci_columns(column)
    for s in styled:
        rows = s.rows.dropna(subset=[column])  # a checkpoint without the metric: neighbours joined
        if not len(rows):
            continue
        x, y = rows["N"].astype(float), rows[column] * scale
        ax.plot(x, y, color=s.color, linestyle=s.linestyle, marker=s.marker, markersize=5,
                label=(labels or {}).get(s.label, s.label))
        if low in rows and rows[low].notna().any():
            ax.fill_between(x, rows[low] * scale, rows[high] * scale, color=s.color, alpha=BAND_ALPHA,
                            linewidth=0, label="_nolegend_")
        std = rows[f"{column}_std"].where(rows["n"] > 1) * scale
        if std.notna().any():
            ax.errorbar(x, y, yerr=std.fillna(0.0), fmt="none", ecolor=s.color, capsize=3, alpha=0.7,
                        label="_nolegend_")


def _published_points(styled: list[Series], baselines, metric: str) -> dict[str, pd.DataFrame]:
    """Published ``metric`` per measured method of the figure (same model and data), one point per
    N sorted by N; where the paper's tables disagree, the lowest-numbered (main) table wins."""
    if baselines is None or not len(baselines) or not styled or metric not in baselines:
        return {}
    model, data = styled[0].rows["model"].iloc[0], styled[0].rows["data"].iloc[0]
    points = {}
    for method in dict.fromkeys(s.method for s in styled):
        pub = baselines[(baselines["model"] == model) & (baselines["method"] == method)
                        & (baselines["data"] == data) & baselines["N"].notna()
                        & baselines[metric].notna()]
        if len(pub):
            pub = pub.assign(rank=pub["table"].map(table_rank)).sort_values(["rank", "N"])
            points[method] = pub.drop_duplicates("N").sort_values("N")
    return points


def _plot_published(ax, styled: list[Series], baselines, metric: str) -> None:
    first = {}
    for s in styled:
        first.setdefault(s.method, s)  # the method's first series gives colour and marker
    for method, pub in _published_points(styled, baselines, metric).items():
        ax.plot(pub["N"].astype(float), pub[metric], color=first[method].color, linestyle=PUBLISHED_LINESTYLE,
                marker=first[method].marker, markerfacecolor="none", markersize=7, label=f"{method} (published)")


# ---------------------------------------------------------------------------------------- layout

def _metric_axis(metric: str) -> tuple[str, bool]:
    """Axis label and whether the metric is a fraction in [0, 1] (the paper's are; other metrics
    have no known range and get automatic limits)."""
    if metric in METRIC_NAMES:
        return f"{METRIC_NAMES[metric]} (fraction, 0–1)", True
    return metric, False


def _legend_width(labels) -> float:
    """Inches a legend of these labels needs: the widest label as rendered, plus the line sample
    (:data:`LEGEND_HANDLE` font sizes long), padding and frame."""
    prop = FontProperties(size=LEGEND_FONTSIZE)
    widest = max((_TEXT.get_text_width_height_descent(label, prop, ismath=False)[0] for label in labels),
                 default=0.0)
    return (widest + (LEGEND_HANDLE + 2.5) * LEGEND_FONTSIZE) / 72 + 0.15


def _figure(n: int, legend_labels=(), width=4.3, height=3.9):
    """A figure with ``n`` panels (at most four per row) and, when there are legend labels, a
    legend column of its own on the right, so a legend never covers data or the title.  Returns
    (figure, the panels' area, panels, the legend's area or None)."""
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    plot_width = width * columns + 0.6
    legend_width = _legend_width(legend_labels) if legend_labels else 0.0
    fig = Figure(figsize=(plot_width + legend_width, height * rows + 0.6), layout="constrained")
    if legend_width:
        area, legend_area = fig.subfigures(1, 2, width_ratios=[plot_width, legend_width], wspace=0)
        for sub in (area, legend_area):  # transparent anyway; its edge at x = ±0 made PDFs differ run to run
            sub.patch.set_visible(False)
    else:
        area, legend_area = fig, None
    axes = list(area.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, area, axes[:n], legend_area


def _legend(legend_area, axes) -> None:
    """One legend for all panels in its own area (labels once each, in the order first drawn)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries and legend_area is not None:
        legend_area.legend(list(entries.values()), list(entries), loc="upper left",
                           fontsize=LEGEND_FONTSIZE, handlelength=LEGEND_HANDLE)


def _suptitle(area, text: str) -> None:
    """A title over ``area`` (a figure or its panels' part), wrapped to its width so it is never
    clipped at the edges."""
    figure_width = area.figure.get_figwidth()
    if area is not area.figure:  # a sub-figure: its share of the width
        figure_width *= area.bbox_relative.width
    width = max(30, int(figure_width * 72 / (TITLE_FONTSIZE * 0.6)))
    area.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=TITLE_FONTSIZE)


def _axes_title(ax, text: str, width: int = 52) -> None:
    ax.set_title(textwrap.fill(text, width), fontsize=TITLE_FONTSIZE)


def _style_n_axis(ax, ylabel, Ns, ylim=FRACTION_LIMITS) -> None:
    """Log-scale N axis (a tick per measured N when there are few), the y label and limits."""
    ax.set_xscale("log")
    ax.set_xlabel("edits applied N (log scale)")
    Ns = sorted({int(n) for n in Ns})
    if 0 < len(Ns) <= MAX_N_TICKS:
        ax.set_xticks(Ns, [f"{n:,}" for n in Ns])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)


def _legend_labels(styled: list[Series], baselines=None, metrics=(), labels: dict[str, str] | None = None) -> list[str]:
    """The labels the figure's legend will show: measured series (``labels``: as renamed), then
    published ones."""
    published = {method for metric in metrics for method in _published_points(styled, baselines, metric)}
    return [(labels or {}).get(s.label, s.label) for s in styled] + [f"{method} (published)" for method in published]


def _band_note(labels: dict[str, str]) -> str:
    """The line a metric figure's title ends with: what the shaded bands are."""
    note = f"shaded: {CONFIDENCE:.0%} bootstrap interval over edit cases"
    unmarked = not any(label.endswith(NO_CI_LABEL) for label in labels.values())
    return note + ("" if unmarked else "; (no CI): the run kept no records/")


# ------------------------------------------------------------------------------------- N scaling

def plot_op_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None, title="") -> Figure | None:
    """OP against N for every method (paper Fig. 1); published points dotted, hollow markers.
    None when the rows have no OP column."""
    if OVERALL not in metric_names(agg):
        return None
    styled = series(agg)
    labels = _metric_labels(styled, [OVERALL])
    fig, area, (ax,), legend_area = _figure(1, _legend_labels(styled, baselines, [OVERALL], labels), width=6.4,
                                            height=4.4)
    _plot_measured(ax, styled, OVERALL, labels=labels)
    _plot_published(ax, styled, baselines, OVERALL)
    _style_n_axis(ax, _metric_axis(OVERALL)[0], agg["N"])
    _legend(legend_area, [ax])
    _suptitle(area, f"{title}\n{_band_note(labels)}" if title else _band_note(labels))
    return fig


def plot_metrics_vs_n(agg: pd.DataFrame, baselines: pd.DataFrame | None = None,
                      title="") -> Figure | None:
    """One panel per metric of the rows but OP (paper Figs. 6–8: Rel, Gen, Loc); None if none."""
    metrics = [metric for metric in metric_names(agg) if metric != OVERALL]
    if not metrics:
        return None
    styled = series(agg)
    labels = _metric_labels(styled, metrics)
    fig, area, axes, legend_area = _figure(len(metrics), _legend_labels(styled, baselines, metrics, labels))
    for ax, metric in zip(axes, metrics):
        label, fraction = _metric_axis(metric)
        _plot_measured(ax, styled, metric, labels=labels)
        _plot_published(ax, styled, baselines, metric)
        _style_n_axis(ax, label, agg["N"], ylim=FRACTION_LIMITS if fraction else None)
        ax.set_title(display_name(metric))
    _legend(legend_area, axes)
    _suptitle(area, f"{title}\n{_band_note(labels)}" if title else _band_note(labels))
    return fig


def plot_cost_vs_n(agg: pd.DataFrame, title="") -> Figure | None:
    """Per-edit time and memory against N (paper Fig. 9), editors only: the unedited model is
    left out.  One memory panel per quantity the rows' ``mem_device`` measured
    (:data:`MEMORY_PANELS`; a panel without any value is dropped).  None without editor rows."""
    editors = agg[~agg["method"].isin(REFERENCE_METHODS)]
    if not len(editors):
        return None
    device = devices(editors["mem_device"])
    if device in MEMORY_PANELS:
        memory = MEMORY_PANELS[device]
    else:
        where = ("device unknown: rows without mem_device" if device == UNKNOWN_DEVICE
                 else f"mixed devices: {device}")
        memory = [(column, f"{name} ({where})") for column, name in NEUTRAL_MEMORY]
    memory = [(column, name) for column, name in memory if editors[column].notna().any()]
    styled = series(editors)
    fig, area, axes, legend_area = _figure(1 + len(memory), _legend_labels(styled), width=4.6)
    time_ax = axes[0]
    _plot_measured(time_ax, styled, "edit_s_mean", scale=1e3)
    times = editors["edit_s_mean"][editors["edit_s_mean"] > 0]
    log_time = bool(len(times)) and times.max() / times.min() > 30  # orders of magnitude apart
    _style_n_axis(time_ax, "ms per edit" + (" (log scale)" if log_time else ""), editors["N"], ylim=None)
    if log_time:
        time_ax.set_yscale("log")
    _axes_title(time_ax, "Edit time per edit")
    for ax, (column, name) in zip(axes[1:], memory):
        _plot_measured(ax, styled, column)
        _style_n_axis(ax, "GB", editors["N"], ylim=None)
        _axes_title(ax, name)
    _legend(legend_area, axes)
    left_out = sorted(set(agg["method"]) & REFERENCE_METHODS)
    _suptitle(area, title + (f" · {', '.join(left_out)} left out (no edits)" if left_out else ""))
    return fig


#: (title, [(column, line label)], y label, fraction axis) of the routing panels; a panel without
#: any value is dropped (editbench.diagnostics names the columns)
ROUTING_PANELS = [
    ("Paraphrases (gen) routed", [("route_gen_own", "own entry"), ("route_gen_wrong", "wrong entry"),
                                  ("route_gen_none", "no entry")], "share of probes", True),
    ("Locality prompts retrieved", [("route_loc_retrieved", "any entry (false retrieval)")], "share of probes", True),
    ("Hopfield displacement ‖r − q‖", [("route_gen_disp", "paraphrases"), ("route_loc_disp", "locality")],
     "median", False),
    ("Nearest other key (cosine)", [("route_keys_nn_median", "median"), ("route_keys_nn_p01", "1st percentile")],
     "cosine", False),
]
ROUTING_DASHES = ["-", "--", ":"]


def plot_routing_vs_n(agg: pd.DataFrame, title="") -> Figure | None:
    """The routing diagnostics against N for every editor that routes (rows with ``route_*``
    columns): one panel per :data:`ROUTING_PANELS` entry, the editor by colour, the line within a
    panel by dash.  None when no row has them."""
    columns = [c for _, lines, _, _ in ROUTING_PANELS for c, _ in lines]
    present = [c for c in columns if c in agg and agg[c].notna().any()]
    if not present:
        return None
    routed = agg[agg[present].notna().any(axis=1)]
    styled = series(routed)
    panels = [p for p in ROUTING_PANELS if any(c in present for c, _ in p[1])]
    fig, area, axes, legend_area = _figure(len(panels), _legend_labels(styled), width=4.6)
    for ax, (name, lines, ylabel, fraction) in zip(axes, panels):
        for dash, (column, line) in zip(ROUTING_DASHES, lines):
            if column not in present:
                continue
            for s in styled:
                rows = s.rows.dropna(subset=[column])
                if len(rows):
                    ax.plot(rows["N"].astype(float), rows[column], color=s.color, linestyle=dash, marker=s.marker,
                            markersize=4, label=s.label if dash == "-" else "_nolegend_")
        _style_n_axis(ax, ylabel, routed["N"], ylim=FRACTION_LIMITS if fraction else None)
        _axes_title(ax, name + "  (" + ", ".join(f"{d} {line}" for d, (c, line) in zip(("—", "--", "··"), lines)
                                                 if c in present) + ")")
    _legend(legend_area, axes)
    _suptitle(area, title)
    return fig


# ----------------------------------------------------------------------------------- calibration

def _calibration_heading(final: pd.DataFrame, what: str = "") -> str:
    """``<method> calibration at N = <N>``: the checkpoint(s) the sweep's cells come from."""
    methods = ", ".join(dict.fromkeys(final["method"].astype(str)))
    Ns = sorted({int(n) for n in final["N"]})
    at = (f"N = {Ns[0]:,}" if len(Ns) == 1
          else f"N = {', '.join(f'{n:,}' for n in Ns)} (the last checkpoint of each setting)")
    return f"{methods} calibration at {at}{what}"


def plot_calibration(calib: pd.DataFrame, title="") -> Figure | None:
    """One heat-map per metric of the rows over the two swept hyper-parameters (rows: the one with
    more values), or one column for a single swept one (None if nothing was swept).  The title
    states the N the cells were measured at; ``title`` (the setting) goes under it."""
    final, swept = final_configs(calib)
    metrics = metric_names(final)
    if not len(final) or not swept or not metrics:
        return None
    y_key = swept[0]
    x_key = swept[1] if len(swept) > 1 else None
    fig, area, axes, _ = _figure(len(metrics), width=4.3 if x_key else 3.4)
    blanks = False  # a combination of the two swept values that was not run
    for ax, metric in zip(axes, metrics):
        label, fraction = _metric_axis(metric)
        vmin, vmax = (0.0, 1.0) if fraction else (None, None)
        grid = (final.pivot_table(index=y_key, columns=x_key, values=metric, aggfunc="mean", dropna=False)
                if x_key else final.groupby(y_key)[[metric]].mean())
        values = grid.to_numpy(dtype=float)
        blanks = blanks or bool(np.isnan(values).any())
        image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis", origin="lower",
                          aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if image.norm(value) < 0.6 else "black")
        if x_key:
            ax.set_xticks(range(len(grid.columns)), [setting_text(v) for v in grid.columns])
        else:
            ax.set_xticks([])
        ax.set_yticks(range(len(grid.index)), [setting_text(v) for v in grid.index])
        ax.set_xlabel(x_key or "")
        ax.set_ylabel(y_key)
        ax.set_title(display_name(metric))
        fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    rest = ", ".join(swept[2:])
    blank = "; blank = not run" if blanks else ""
    _suptitle(fig, _calibration_heading(final, (f"; averaged over {rest}" if rest else "") + blank)
              + (f"\n{title}" if title else ""))
    return fig


def pareto_front(points: pd.DataFrame, x="loc", y="gen") -> pd.DataFrame:
    """Rows not dominated in (x, y), both higher-is-better, sorted by x descending."""
    best_y, keep = -math.inf, []
    for index, row in points.sort_values([x, y], ascending=False).iterrows():
        if row[y] > best_y:
            keep.append(index)
            best_y = row[y]
    return points.loc[keep]


def plot_pareto(calib: pd.DataFrame, title="") -> Figure | None:
    """Loc against Gen for every calibration setting, colour = OP, the Pareto front marked and
    numbered, its settings named by number in the legend below (None unless the rows have loc,
    gen and op).  The title states the N."""
    if not {"loc", "gen", OVERALL} <= set(metric_names(calib)):
        return None
    final, swept = final_configs(calib)
    final = final.dropna(subset=["loc", "gen"])
    if not len(final):
        return None
    fig = Figure(figsize=(7.5, 5.8), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(final["loc"], final["gen"], c=final["op"], cmap="viridis", vmin=0, vmax=1,
                        s=30, label="setting (colour = OP)")
    front = pareto_front(final)
    ax.plot(front["loc"], front["gen"], color="#d62728", marker="o", markerfacecolor="none",
            markersize=10, drawstyle="steps-post", label="Pareto front (higher Loc and Gen)")
    ax.margins(x=0.08, y=0.08)
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):  # fractions: not past 0 or 1
        low, high = get()
        set_(max(low, FRACTION_LIMITS[0]), min(high, FRACTION_LIMITS[1]))
    handles, labels = ax.get_legend_handles_labels()
    for number, (_, row) in enumerate(front.iterrows(), start=1):  # numbered; named in the legend
        ax.annotate(str(number), (row["loc"], row["gen"]), fontsize=8, xytext=(7, 5),
                    textcoords="offset points", color="#d62728")
        text = ", ".join(f"{key}={setting_text(row[key])}" for key in swept) or row["label"]
        handles.append(Line2D([], [], linestyle="none", marker=f"${number}$", color="#d62728"))
        labels.append(text)
    fig.colorbar(points, ax=ax, label="OP (fraction, 0–1)")
    ax.set_xlabel("Loc (fraction, 0–1)")
    ax.set_ylabel("Gen (fraction, 0–1)")
    ax.grid(True, alpha=0.3)
    fig.legend(handles, labels, loc="outside lower center", ncols=1, fontsize=LEGEND_FONTSIZE)
    _suptitle(fig, _calibration_heading(final, ": Loc against Gen") + (f"\n{title}" if title else ""))
    return fig
