"""Figures 1-4 of the report, drawn from the runs' metrics; figures 5-7 are the inspection
library's, picked up here."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resjax import plots  # noqa: E402
from resjax.probes import signals  # noqa: E402
from resjax.study.grid import norm_title, read_json  # noqa: E402
from resjax.study.numbers import RunData  # noqa: E402


def _save(fig, fig_dir: str, name: str, numbers: dict) -> dict:
    """Saves a report figure; returns its path and pixel size (the HTML report's <img>)."""
    width, height = (int(round(x * plots.DPI)) for x in fig.get_size_inches())
    return {
        'path': plots.save_figure(fig, fig_dir, name, numbers),
        'width': width,
        'height': height,
    }


def _depth_colors(depths: Iterable[int]) -> dict[int, Any]:
    depths = sorted(set(depths))
    cmap = plt.cm.viridis
    return {d: cmap(0.85 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}


KIND_COLORS = {False: 'tab:red', True: 'tab:blue'}


def _norms(runs: list[RunData]) -> list[str]:
    """The runs' norms, BatchNorm (the paper's setting) first."""
    return sorted({r.spec.norm for r in runs}, key=lambda n: n != 'batch')


def _net_color(runs: list[RunData], run: RunData) -> Any:
    """Plain red, residual blue, darker = deeper among `runs`."""
    depths = sorted({r.spec.depth for r in runs})
    shade = 0.45 + 0.55 * depths.index(run.spec.depth) / max(1, len(depths) - 1)
    return (plt.cm.Blues if run.spec.residual else plt.cm.Reds)(shade)


def figure_errors(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 1 (the paper's Fig. 6): training error (thin, dashed) and test error (bold) vs step,
    plain nets left, residual right, one row per norm, one colour per depth."""
    runs = [r for r in runs if r.rows]
    if not runs:
        return None
    norms = _norms(runs)
    colors = _depth_colors(r.spec.depth for r in runs)
    fig, axes = plt.subplots(len(norms), 2, figsize=(11, 3.6 * len(norms)), squeeze=False)
    numbers, top = {}, 0.0
    for i, norm in enumerate(norms):
        for j, residual in enumerate((False, True)):
            ax = axes[i, j]
            for r in (r for r in runs if r.spec.norm == norm and r.spec.residual == residual):
                c = colors[r.spec.depth]
                st, tr = r.series('train/accuracy')
                se, te = r.series('eval/accuracy')
                ax.plot(st, 100 * (1 - tr), '--', color=c, lw=0.8)
                ax.plot(
                    se,
                    100 * (1 - te),
                    '-',
                    color=c,
                    lw=2,
                    label=r.spec.label.split(' (')[0] + (f' s{r.spec.seed}' if r.spec.seed else ''),
                )
                if len(te):
                    top = max(top, 100 * (1 - te[-1]), 100 * (1 - tr[-1]) if len(tr) else 0)
                numbers[r.spec.name] = {
                    'train_steps': st.tolist(),
                    'train_error': (1 - tr).tolist(),
                    'test_steps': se.tolist(),
                    'test_error': (1 - te).tolist(),
                }
            ax.set_title(f'{"ResNet" if residual else "plain"} nets, {norm_title(norm)}')
            ax.set_xlabel('step')
            ax.set_ylabel('error (%)')
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, title='bold: test, dashed: train', title_fontsize=7)
    for ax in axes.ravel():
        ax.set_ylim(0, min(100, max(10.0, 3 * top)))
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig1_error', numbers)


def _layout(runs: list[RunData]) -> list[tuple[int, str]]:
    # One column per (depth, norm) that has probe rows: BN first, then by depth.
    cols = {(r.spec.depth, r.spec.norm) for r in runs if r.probe_rows()}
    return sorted(cols, key=lambda c: (c[1] != 'batch', c[0]))


def figure_gradients(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 2: per-layer weight-gradient norms (top) and activation-gradient norms (bottom),
    log scale, input on the left, at init and at the middle and last probe steps (line style);
    plain red, residual blue; one column per depth and norm; first seed."""
    runs = [r for r in runs if r.probe_rows() and r.spec.seed == min(x.spec.seed for x in runs)]
    cols = _layout(runs)
    if not cols:
        return None
    styles = ['-', '--', ':']
    fig, axes = plt.subplots(2, len(cols), figsize=(4.2 * len(cols), 7), squeeze=False)
    numbers = {}
    for j, (depth, norm) in enumerate(cols):
        for i, signal in enumerate(('grad_norm', 'act_grad_norm')):
            ax = axes[i, j]
            for r in runs:
                if (r.spec.depth, r.spec.norm) != (depth, norm):
                    continue
                rows = r.probe_rows()
                for style, step in zip(styles, plots.pick_steps(sorted(rows), None)):
                    layers, values = signals.profile(rows[step], signal)
                    ax.semilogy(
                        values,
                        style,
                        color=KIND_COLORS[r.spec.residual],
                        marker='.',
                        ms=3,
                        label=f'{r.spec.label.split(" (")[0]}, step {step}',
                    )
                    numbers.setdefault(r.spec.name, {}).setdefault(signal, {})[step] = dict(
                        zip(layers, values)
                    )
            ax.set_title(f'depth {depth}, {norm_title(norm)}', fontsize=10)
            ax.set_xlabel('layer (input -> output)' if i == 0 else 'block output (input -> output)')
            ax.set_ylabel(plots.SIGNALS[signal].split(' (')[0] if j == 0 else '')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig2_gradients', numbers)


def figure_responses(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 3 (the paper's Fig. 7): std of each 3x3 layer's response (after BN, before the
    nonlinearity) at the last probe step, in forward order (top) and sorted descending
    (bottom); one column per norm, one line per net (plain red, residual blue, darker =
    deeper); first seed."""
    runs = [r for r in runs if r.probe_rows() and r.spec.seed == min(x.spec.seed for x in runs)]
    if not runs:
        return None
    norms = _norms(runs)
    fig, axes = plt.subplots(2, len(norms), figsize=(6 * len(norms), 7), squeeze=False)
    numbers = {}
    for j, norm in enumerate(norms):
        for r in (r for r in runs if r.spec.norm == norm):
            rows = r.probe_rows()
            step = max(rows)
            layers, values = signals.profile(rows[step], 'act_std')
            layers_values = [(k, v) for k, v in zip(layers, values) if not k.startswith('head')]
            values = [v for _, v in layers_values]
            color = _net_color(runs, r)
            label = f'{r.spec.label.split(" (")[0]} (step {step})'
            axes[0, j].plot(values, color=color, marker='.', ms=3, label=label)
            axes[1, j].plot(sorted(values, reverse=True), color=color, label=label)
            numbers[r.spec.name] = {'step': step, 'act_std': dict(layers_values)}
        for i, xlabel in enumerate(
            ('layer index (original order)', 'layer index (sorted by magnitude)')
        ):
            ax = axes[i, j]
            ax.set_title(f'response std, {norm_title(norm)}', fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel('std')
            ax.set_yscale('log')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig3_responses', numbers)


def figure_sharpness(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 4: lambda_max of the Hessian of the mean training loss on the fixed probe batch
    (solid) against 2/lr (dotted, same colour) over training; one panel per norm, colour by
    net (plain red, residual blue, darker = deeper)."""
    runs = [r for r in runs if len(r.series('hessian/lambda_max')[0])]
    if not runs:
        return None
    norms = _norms(runs)
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.2), squeeze=False)
    numbers = {}
    for j, norm in enumerate(norms):
        ax = axes[0, j]
        for r in (r for r in runs if r.spec.norm == norm):
            steps, lam = r.series('hessian/lambda_max')
            _, two = r.series('hessian/two_over_lr')
            color = _net_color(runs, r)
            label = r.spec.label.split(' (')[0] + (f' s{r.spec.seed}' if r.spec.seed else '')
            ax.semilogy(steps, np.maximum(lam, 1e-6), '-', marker='.', color=color, label=label)
            ax.semilogy(steps, two, ':', color=color, lw=1)
            numbers[r.spec.name] = {
                'steps': steps.tolist(),
                'lambda_max': lam.tolist(),
                'two_over_lr': two.tolist(),
            }
        ax.set_title(f'sharpness vs 2/lr (dotted), {norm_title(norm)}', fontsize=10)
        ax.set_xlabel('step')
        ax.set_ylabel('lambda_max (Hessian of the mean loss)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig4_sharpness', numbers)


def inspection_figure(workdir: str, figure: str) -> tuple[dict | None, dict | None]:
    """(figure record, numbers JSON) of an inspection figure drawn earlier, or (None, None)."""
    out_dir = os.path.join(workdir, 'inspect', figure)
    path = os.path.join(out_dir, figure + '.png')
    numbers = read_json(os.path.join(out_dir, figure + '.json'))
    if not os.path.exists(path) or numbers is None:
        return None, None
    height, width = plt.imread(path).shape[:2]
    return {'path': path, 'width': int(width), 'height': int(height)}, numbers
