"""Figures (matplotlib, Agg backend). Every figure is a PNG with its numbers beside it as JSON,
so a figure can be redrawn and a number checked without re-running anything."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from resjax import models  # noqa: E402
from resjax.metrics import read_metrics  # noqa: E402
from resjax.probes import signals  # noqa: E402
from resjax.runs import run_label  # noqa: E402

DPI = 100  # Pixels per inch of every PNG (the study's HTML report sizes images from it).

# What each per-layer signal is, for axis labels.
SIGNALS = {
    'grad_norm': 'weight gradient norm ||dL/dW||',
    'act_grad_norm': 'activation gradient norm ||dL/dh|| (block outputs)',
    'act_std': 'response std (after BN, before ReLU)',
    'gsc': 'gradient scale coefficient (Philipp et al. 2018)',
    'update_ratio': '||update|| / ||W||',
}
# Signals of block outputs (index 0 = the stem's output), not of conv/dense layers.
BLOCK_SIGNALS = ('act_grad_norm', 'act_norm', 'gsc')


def probe_rows(workdir: str) -> dict[int, dict[str, float]]:
    """The per-layer probe rows of a run (rows holding `grad_norm/global`), by step."""
    return {int(r['step']): r for r in read_metrics(workdir) if 'grad_norm/global' in r}


def pick_steps(available: list[int], wanted: list[int] | None) -> list[int]:
    """`wanted` steps that exist (-1 = the last), or first, middle and last by default."""
    if not available:
        return []
    if not wanted:
        return sorted({available[0], available[len(available) // 2], available[-1]})
    return sorted({available[-1] if s == -1 else s for s in wanted if s == -1 or s in available})


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f'not JSON serialisable: {type(x)}')


def write_json(path: str, obj: Any) -> str:
    """Writes `obj` to `path` as JSON, atomically (arrays as lists); returns `path`."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1, default=_jsonable)
    os.replace(path + '.tmp', path)
    return path


def label_log_axes(fig: Figure) -> None:
    """Enough labelled ticks on every log axis of `fig`: matplotlib labels only the powers of
    ten, often two ticks (or one) for a whole axis. Under one decade: evenly spaced plain
    numbers; under three: 1, 2 and 5 x 10^k; wider axes keep the powers of ten."""
    for ax in fig.axes:
        for axis, scale, limits in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            lo, hi = sorted(limits)
            if scale != 'log' or lo <= 0:
                continue
            decades = np.log10(hi / lo)
            if decades < 1:
                axis.set_major_locator(ticker.MaxNLocator(nbins=5))
                axis.set_major_formatter(ticker.ScalarFormatter(useOffset=False))
            elif decades < 3:
                axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False))
            else:
                continue
            axis.set_minor_formatter(ticker.NullFormatter())


def stage_of(name: str) -> str:
    """The part of a resjax model a layer or block belongs to, from its name
    (`models.layout.parse_name`): '001_stage1_block1/conv1' -> 'stage 1', '000_stem/conv' ->
    'stem', 'head/dense' -> 'head'; '' for names of other models."""
    parts = models.layout.parse_name(name)
    if parts is not None:
        return f'stage {parts.stage}' if parts.stage else 'stem'
    top = name.split('/', 1)[0]
    return top if top in (models.layout.HEAD, 'logits') else ''


def mark_stages(
    ax: Any,
    names: Sequence[str],
    positions: Sequence[float] | None = None,
    axis: str = 'x',
    label: bool | str = True,
) -> None:
    """Integer ticks on a layer (or block) axis, and for resjax's names a dotted line between
    consecutive stages and (if `label`) the stages' names on a second axis opposite (top for
    x, right for y; a string `label` titles it). `names[i]` is drawn at `positions[i]`
    (default i); `axis` is the one that holds them ('x' or 'y')."""
    positions = list(range(len(names))) if positions is None else list(positions)
    (ax.xaxis if axis == 'x' else ax.yaxis).set_major_locator(ticker.MaxNLocator(integer=True))
    spans: list[list] = []  # [stage, first position, last position]
    for stage, pos in zip((stage_of(n) for n in names), positions):
        if spans and spans[-1][0] == stage:
            spans[-1][2] = pos
        else:
            spans.append([stage, pos, pos])
    if not any(stage for stage, _, _ in spans):
        return
    line = ax.axvline if axis == 'x' else ax.axhline
    for (_, _, last), (_, first, _) in zip(spans, spans[1:]):
        line((last + first) / 2, color='0.45' if axis == 'x' and label else 'w', ls=':', lw=0.9)
    if not label:
        return
    # The stem and head are one layer each: the axis label names them.
    stages = [(stage, (first + last) / 2) for stage, first, last in spans if 'stage' in stage]
    other = ax.secondary_xaxis('top') if axis == 'x' else ax.secondary_yaxis('right')
    other.set_ticks([c for _, c in stages], [stage for stage, _ in stages])
    other.tick_params(length=0, labelsize=7, labelcolor='0.35')
    if isinstance(label, str):
        (other.set_xlabel if axis == 'x' else other.set_ylabel)(label, fontsize=7, color='0.35')


def save_figure(fig: Figure, out_dir: str, name: str, numbers: Any = None) -> str:
    """Writes `<out_dir>/<name>.png` at `DPI` (and `<name>.json` of `numbers`, unless None),
    closes `fig` and returns the PNG's path: the one writer of every resjax figure. Log axes
    get intermediate tick labels first (`label_log_axes`)."""
    label_log_axes(fig)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + '.png')
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    if numbers is not None:
        write_json(os.path.join(out_dir, name + '.json'), numbers)
    return path


def profile_figure(
    runs: dict[str, dict[int, dict[str, float]]], signal: str, steps: list[int] | None
) -> tuple[Figure, dict]:
    """Per-layer profile of `signal` (log y, layer index in forward order on x): one colour
    per run, one line style per step. Returns the figure and its numbers."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout='constrained')
    styles = ['-', '--', ':', '-.']
    numbers = {}
    drawn = []  # The layer names of each line, for the stage marks.
    for color, (label, rows) in zip(plt.cm.tab10.colors, runs.items()):
        for style, step in zip(styles * 10, pick_steps(sorted(rows), steps)):
            layers, values = signals.profile(rows[step], signal)
            if not layers:
                continue
            drawn.append(layers)
            ax.semilogy(
                range(len(values)),
                values,
                style,
                color=color,
                marker='.',
                label=f'{label}, step {step}',
            )
            numbers[f'{label}@{step}'] = dict(zip(layers, values))
    ax.set_xlabel(
        f'{"block output" if signal in BLOCK_SIGNALS else "layer"} index, forward order'
        f' ({"0 = stem" if signal in BLOCK_SIGNALS else "0 = stem conv, last = head"})'
    )
    mark_lines(ax, drawn)
    ax.set_ylabel(SIGNALS.get(signal, signal))
    ax.set_title(f'{signal} per {"block output" if signal in BLOCK_SIGNALS else "layer"}')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    return fig, numbers


def common_names(lines: list[list[str]]) -> list[str]:
    """The layer names whose stages a panel marks: the longest line's (the deepest net's;
    shallower nets' stages end earlier, which `mark_stages` says when `lines` differ)."""
    return max(lines, key=len) if lines else []


def mark_lines(ax: Any, lines: list[list[str]], positions: Any = None) -> None:
    """`mark_stages` for the lines of one panel: the deepest net's stages, said so when the
    lines are of nets of different depths. `positions(names)` maps names to x."""
    names = common_names(lines)
    label = True if all(x == names for x in lines) else 'stages of the deepest net'
    mark_stages(ax, names, None if positions is None else positions(names), label=label)


def plot_profiles(
    runs: dict[str, dict[int, dict[str, float]]],
    signal: str,
    steps: list[int] | None,
    out_dir: str,
) -> str:
    """`profile_figure`, written as `<signal>_profile.png` and `.json`."""
    fig, numbers = profile_figure(runs, signal, steps)
    return save_figure(fig, out_dir, f'{signal}_profile', numbers)


def plot_heatmap(label: str, rows: dict[int, dict[str, float]], signal: str, out_dir: str) -> str:
    """Layers x steps heatmap of log10 `signal` for one run."""
    steps = sorted(rows)
    layers, _ = signals.profile(rows[steps[0]], signal)
    grid = np.array([[rows[s].get(f'{signal}/{layer}', np.nan) for s in steps] for layer in layers])
    fig, ax = plt.subplots(figsize=(8, 5), layout='constrained')
    # Each step's column centred on it, edges halfway to its neighbours (steps need not be even).
    s = np.asarray(steps, np.float64)
    gaps = np.diff(s) if len(s) > 1 else np.ones(1)
    x_edges = np.concatenate([[s[0] - gaps[0] / 2], s[:-1] + gaps / 2, [s[-1] + gaps[-1] / 2]])
    y_edges = np.arange(len(layers) + 1) - 0.5
    im = ax.pcolormesh(x_edges, y_edges, np.log10(grid), cmap='viridis')
    if len(steps) <= 12:
        ax.set_xticks(steps)
    fig.colorbar(im, ax=ax, label=f'log10 {signal}')
    ax.set_xlabel('step')
    ax.set_ylabel('layer index (0 = stem conv, at the bottom)')
    mark_stages(ax, layers, axis='y')
    ax.set_title(f'{label}: {signal}')
    safe = label.replace(' ', '_').replace('(', '').replace(')', '')
    return save_figure(
        fig,
        out_dir,
        f'{signal}_heatmap_{safe}',
        {'steps': steps, 'layers': layers, 'values': grid.tolist()},
    )


def plot_signals(workdirs: list[str], out_dir: str, steps: list[int] | None = None) -> list[str]:
    """All signal figures for `workdirs`: profiles of weight gradients, activation
    gradients and response std across runs, and a gradient-norm heatmap per run."""
    runs = {}
    for w in workdirs:
        rows = probe_rows(w)
        if not rows:
            raise ValueError(
                f'{w} has no probe rows in metrics.jsonl; train with --config.probes.every_steps=N'
            )
        label = run_label(w)
        runs[label if label not in runs else w] = rows
    paths = [
        plot_profiles(runs, s, steps, out_dir)
        for s in ('grad_norm', 'act_grad_norm', 'act_std', 'gsc')
    ]
    paths += [plot_heatmap(label, rows, 'grad_norm', out_dir) for label, rows in runs.items()]
    return paths


def colors() -> tuple:
    """The line colours of runs on one panel, in order (matplotlib's tab10)."""
    return plt.cm.tab10.colors


def block_index(name: str, position: int) -> int:
    """k of block k (its forward index, 0 = the stem) from a resjax name ('003_stage2_block1'
    -> 3, `models.layout.parse_name`); `position` + 1 for names of other models."""
    parts = models.layout.parse_name(name)
    return position + 1 if parts is None else parts.position
