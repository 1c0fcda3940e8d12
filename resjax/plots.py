"""Figures (matplotlib, Agg backend). Every figure is a PNG with its numbers beside it as JSON,
so a figure can be redrawn and a number checked without re-running anything."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from resjax import models  # noqa: E402
from resjax.metrics import read_metrics  # noqa: E402
from resjax.probes import signals  # noqa: E402

if TYPE_CHECKING:
    from resjax import inspection

DPI = 100  # Pixels per inch of every PNG (the study's HTML report sizes images from it).

# What each per-layer signal is, for axis labels.
SIGNALS = {
    'grad_norm': 'weight gradient norm ||dL/dW||',
    'act_grad_norm': 'activation gradient norm ||dL/dh|| (block outputs)',
    'act_std': 'response std (after BN, before ReLU)',
    'gsc': 'gradient scale coefficient (Philipp et al. 2018)',
    'update_ratio': '||update|| / ||W||',
}


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


def run_label(workdir: str) -> str:
    """A short label from a workdir's config (its model family's, e.g. 'plain-56 (no BN)'),
    or the workdir's name."""
    try:
        with open(os.path.join(workdir, 'config.json')) as f:
            return models.run_label(json.load(f)['model'])
    except (OSError, KeyError, ValueError):
        return os.path.basename(os.path.normpath(workdir))


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


def save_figure(fig: Figure, out_dir: str, name: str, numbers: Any = None) -> str:
    """Writes `<out_dir>/<name>.png` at `DPI` (and `<name>.json` of `numbers`, unless None),
    closes `fig` and returns the PNG's path: the one writer of every resjax figure."""
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
    for color, (label, rows) in zip(plt.cm.tab10.colors, runs.items()):
        for style, step in zip(styles * 10, pick_steps(sorted(rows), steps)):
            layers, values = signals.profile(rows[step], signal)
            if not layers:
                continue
            ax.semilogy(
                range(len(values)),
                values,
                style,
                color=color,
                marker='.',
                label=f'{label}, step {step}',
            )
            numbers[f'{label}@{step}'] = dict(zip(layers, values))
    ax.set_xlabel('layer (forward order: input -> output)')
    ax.set_ylabel(SIGNALS.get(signal, signal))
    ax.set_title(f'{signal} per layer')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    return fig, numbers


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
    im = ax.imshow(
        np.log10(grid),
        aspect='auto',
        origin='lower',
        cmap='viridis',
        extent=(steps[0], steps[-1], -0.5, len(layers) - 0.5),
    )
    fig.colorbar(im, ax=ax, label=f'log10 {signal}')
    ax.set_xlabel('step')
    ax.set_ylabel('layer index (input at the bottom)')
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


# ---------------------------------------------------------------------------------------------
# Inspection figures. Each draws one `resjax.inspection` probe from its numbers alone: `runs` is
# {run label: that run's numbers (with its 'step')}, as the probe computed them; the figure is
# returned, and `inspection.run_probe` writes it beside its numbers.


def _colors() -> tuple:
    return plt.cm.tab10.colors


def _landscape_settings(opts: inspection.Options) -> str:
    return (
        f'{opts.direction} directions, BN {opts.bn_mode} mode, {opts.examples} train examples,'
        f' biases/BN {opts.biasbn}, seed {opts.seed}'
    )


def _loss_and_accuracy(runs: dict, xlabel: str, title: str, marks: tuple = ()) -> Figure:
    """Loss (log scale) and accuracy against `alphas`, one line per run; vertical lines at
    `marks`."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, (label, r) in zip(_colors(), runs.items()):
        ax.plot(r['alphas'], r['loss'], color=color, label=label)
        ax2.plot(r['alphas'], r['accuracy'], color=color, label=label)
    for a, ylabel in ((ax, 'mean cross-entropy (nats)'), (ax2, 'accuracy')):
        for x in marks:
            a.axvline(x, color='k', lw=0.5)
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    ax.set_yscale('log')
    fig.suptitle(title, fontsize=9)
    return fig


def draw_landscape1d(runs: dict, opts: inspection.Options) -> Figure:
    """1-D loss and accuracy curves along one direction."""
    title = f'1-D loss landscape, {_landscape_settings(opts)}'
    return _loss_and_accuracy(runs, f'alpha ({opts.direction} direction)', title)


def draw_interpolate(runs: dict, opts: inspection.Options) -> Figure:
    """Loss and accuracy along the line from the start (0) to each checkpoint (1)."""
    title = f'Linear interpolation from {opts.to or "initialisation"}, BN {opts.bn_mode} mode'
    return _loss_and_accuracy(runs, 'alpha (0 = start, 1 = checkpoint)', title, marks=(0, 1))


def draw_landscape2d(runs: dict, opts: inspection.Options) -> Figure:
    """2-D loss contours (labelled levels), one panel per run."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, (label, r) in zip(axes[0], runs.items()):
        loss = r['loss']
        levels = np.linspace(loss.min(), min(loss.max(), loss.min() + 10), 15)
        cs = ax.contour(r['xs'], r['ys'], loss.T, levels=levels, cmap='viridis')
        ax.clabel(cs, inline=True, fontsize=7, fmt='%.2f')
        ax.plot(0, 0, 'r+')
        ax.set_title(f'{label} (step {r["step"]})', fontsize=10)
        ax.set_xlabel('alpha (direction 1)')
        ax.set_ylabel('beta (direction 2)')
        ax.set_aspect('equal')
    title = f'2-D loss landscape (mean cross-entropy)\n{_landscape_settings(opts)}'
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def draw_spectrum(runs: dict, opts: inspection.Options) -> Figure:
    """Hessian eigenvalue density (log), one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, r) in zip(_colors(), runs.items()):
        ax.semilogy(r['grid'], r['density'] + 1e-12, color=color, label=label)
    ax.set_xlabel('eigenvalue of the Hessian of the mean loss')
    ax.set_ylabel('density (log)')
    ax.set_title(f'Hessian eigenvalue density (SLQ), BN {opts.bn_mode} mode')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw_lesion(runs: dict, opts: inspection.Options) -> Figure:
    """Test error with one residual branch removed: one bar per block (hatched: a downsampling
    or projection shortcut), one colour per run, dashed: the intact net."""
    most = max(len(r['blocks']) for r in runs.values())
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * most * len(runs)), 4.5))
    width = 0.8 / max(1, len(runs))
    for i, (color, (label, r)) in enumerate(zip(_colors(), runs.items())):
        if not r['blocks']:
            continue
        xs = np.arange(len(r['blocks'])) + i * width
        bars = ax.bar(xs, [b['test_error'] for b in r['blocks']], width, color=color, label=label)
        for bar, b in zip(bars, r['blocks']):
            if b['shortcut'] != 'identity':
                bar.set_hatch('//')
        ax.axhline(r['test_error_intact'], color=color, ls='--', lw=1, label=f'{label} intact')
    ax.set_xlabel('removed block (forward order; hatched = downsampling/projection shortcut)')
    ax.set_ylabel('test error')
    ax.set_title('Lesion: one residual branch removed at a time (BN eval mode)')
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw_shattering(runs: dict, opts: inspection.Options) -> Figure:
    """Input-gradient correlation against distance along input lines, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, r) in zip(_colors(), runs.items()):
        ax.plot(r['distance'], r['correlation'], color=color, marker='.', label=label)
    ax.axhline(0, color='k', lw=0.5)
    ax.set_xlabel('distance between inputs along a random line (L2, input units)')
    ax.set_ylabel('mean cosine of input gradients')
    ax.set_title('Gradient correlation along input lines (Balduzzi et al. 2017), BN eval mode')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw_signals(runs: dict, opts: inspection.Options) -> dict[str, tuple[Figure, dict]]:
    """The `plot_signals.py` profiles of each checkpoint: {'signals/<signal>_profile':
    (figure, its numbers)}."""
    rows = {label: {r['step']: r} for label, r in runs.items()}
    return {
        f'signals/{s}_profile': profile_figure(rows, s, None)
        for s in ('grad_norm', 'act_grad_norm', 'act_std', 'gsc')
    }


def draw_blocks(runs: dict, opts: inspection.Options) -> Figure:
    """The CKA matrix of every pair of stem and block outputs (top row, one panel per run); per
    block the change it makes, its branch ratio and its layers' distance from init (bottom)."""
    n = len(runs)
    fig, axes = plt.subplots(2, max(n, 3), figsize=(4.2 * max(n, 3), 8), squeeze=False)
    for ax, (label, r) in zip(axes[0], runs.items()):
        im = ax.imshow(np.array(r['cka_matrix']), vmin=0, vmax=1, cmap='magma', origin='lower')
        ax.set_title(f'{label}: linear CKA', fontsize=9)
        ax.set_xlabel('block (0 = stem)')
        ax.set_ylabel('block (0 = stem)')
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes[0][n:]:
        ax.axis('off')
    panels = [
        ('block_change', '||h_k - h_(k-1)|| / ||h_(k-1)||', True),
        ('branch_ratio', '||F(x)|| / ||x|| (residual blocks)', True),
        ('init_distance', '||W - W_0|| / ||W_0|| per layer', False),
    ]
    for ax, (prefix, title, log) in zip(axes[1], panels):
        for color, (label, r) in zip(_colors(), runs.items()):
            _, values = signals.profile(r, prefix)
            if values:
                ax.plot(range(1, len(values) + 1), values, '.-', color=color, label=label)
        if log and ax.get_lines():
            ax.set_yscale('log')
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('block' if prefix != 'init_distance' else 'layer (forward order)')
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    for ax in axes[1][3:]:
        ax.axis('off')
    examples = next(iter(runs.values()))['examples'] if runs else None
    fig.suptitle(f'Block probes on {examples} training examples, BN {opts.bn_mode} mode',
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig
