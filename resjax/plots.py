"""Figures (matplotlib, Agg backend). Every figure is a PNG with its numbers beside it as JSON,
so a figure can be redrawn and a number checked without re-running anything."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from resjax import models  # noqa: E402
from resjax.metrics import read_metrics  # noqa: E402
from resjax.probes import signals  # noqa: E402

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


def plot_profiles(
    runs: dict[str, dict[int, dict[str, float]]],
    signal: str,
    steps: list[int] | None,
    out_dir: str,
) -> str:
    """Per-layer profile of `signal` (log y, layer index in forward order on x): one colour
    per run, one line style per step. Writes `<signal>_profile.png` and `.json`."""
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
