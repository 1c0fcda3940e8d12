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
from resjax.study.numbers import RunData, added_block_drift  # noqa: E402


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
            drawn = []
            for r in runs:
                if (r.spec.depth, r.spec.norm) != (depth, norm):
                    continue
                rows = r.probe_rows()
                for style, step in zip(styles, plots.pick_steps(sorted(rows), None)):
                    layers, values = signals.profile(rows[step], signal)
                    drawn.append(layers)
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
            ax.set_xlabel(
                'layer index (0 = stem conv, last = head)'
                if i == 0
                else 'block output index (0 = stem)'
            )
            plots.mark_lines(ax, drawn)
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
        drawn = []
        for r in (r for r in runs if r.spec.norm == norm):
            rows = r.probe_rows()
            step = max(rows)
            layers, values = signals.profile(rows[step], 'act_std')
            layers_values = [(k, v) for k, v in zip(layers, values) if not k.startswith('head')]
            values = [v for _, v in layers_values]
            drawn.append([k for k, _ in layers_values])
            color = _net_color(runs, r)
            label = f'{r.spec.label.split(" (")[0]} (step {step})'
            axes[0, j].plot(values, color=color, marker='.', ms=3, label=label)
            axes[1, j].plot(sorted(values, reverse=True), color=color, label=label)
            numbers[r.spec.name] = {'step': step, 'act_std': dict(layers_values)}
        plots.mark_lines(axes[0, j], drawn)
        axes[1, j].xaxis.set_major_locator(plots.ticker.MaxNLocator(integer=True))
        for i, xlabel in enumerate(
            ('3x3 conv layer index (0 = stem conv)', 'rank (layers sorted by std, largest first)')
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


# ---------------------------------------------------------------------------------------------
# Figures 8-11: the block probes and the constructed run (the question's second half).


def _question_runs(runs: list[RunData]) -> list[RunData]:
    """The first norm's and seed's runs with probe rows: grid nets, then constructed ones (not
    the sweep's runs, nor the `study.variants` runs, which the shortcut finding reads)."""
    runs = [r for r in runs if r.probe_rows() and r.spec.lr is None and r.spec.variant is None]
    if not runs:
        return []
    norm, seed = _norms(runs)[0], min(r.spec.seed for r in runs)
    return [r for r in runs if r.spec.norm == norm and r.spec.seed == seed]


def _style(runs: list[RunData], run: RunData) -> dict:
    """Grid nets by `_net_color`; a constructed run green, dash-dotted."""
    if run.spec.source:
        return {'color': 'tab:green', 'ls': '-.'}
    return {'color': _net_color([r for r in runs if not r.spec.source], run), 'ls': '-'}


def _last(run: RunData) -> tuple[int, dict]:
    rows = run.probe_rows()
    return max(rows), rows[max(rows)]


def _blocks(names: list[str]) -> list[int]:
    """x positions of per-block values: block k at k (0 = the stem), as the CKA matrix has it."""
    return [plots.block_index(n, j) for j, n in enumerate(names)]


def _mark_blocks(ax, lines: list[list[str]]) -> None:
    """Stage marks of the deepest net's blocks (`plots.mark_lines`)."""
    plots.mark_lines(ax, lines, _blocks)


def figure_blocks(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 8: what each block does at the last probe (training-mode BN, the probe batch): the
    relative change it makes to its input (every net), and the residual branch ratio
    ||F(x)|| / ||x|| (residual nets; dotted: at init)."""
    runs = [r for r in _question_runs(runs) if signals.profile(_last(r)[1], 'block_change')[0]]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    numbers = {}
    drawn: tuple[list, list] = ([], [])
    for r in runs:
        step, row = _last(r)
        style = _style(runs, r)
        names, change = signals.profile(row, 'block_change')
        drawn[0].append(names)
        axes[0].semilogy(_blocks(names), change, marker='.', label=r.spec.label, **style)
        numbers[r.spec.name] = {'step': step, 'block_change': change}
        names, branch = signals.profile(row, 'branch_ratio')
        if branch:
            drawn[1].append(names)
            axes[1].semilogy(_blocks(names), branch, marker='.', label=r.spec.label, **style)
            first_names, first = signals.profile(
                r.probe_rows()[min(r.probe_rows())], 'branch_ratio'
            )
            axes[1].semilogy(_blocks(first_names), first, ':', color=style['color'], lw=1)
            numbers[r.spec.name].update(branch_ratio=branch, branch_ratio_first=first)
    axes[0].set_title('change a block makes: ||h_k - h_(k-1)|| / ||h_(k-1)||', fontsize=10)
    axes[1].set_title('residual branch ||F(x)|| / ||x|| (dotted: first probe)', fontsize=10)
    axes[0].set_ylabel('relative change')
    axes[1].set_ylabel('branch ratio')
    for ax, names in zip(axes, drawn):
        _mark_blocks(ax, names)
        ax.set_xlabel('block k (1 = first after the stem)')
        ax.grid(True, which='both', alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig8_blocks', numbers)


def figure_cka(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 9: linear CKA between consecutive block outputs at the last probe (solid) and the
    first (dotted): how alike a block's output is to its input, as representations."""
    runs = [r for r in _question_runs(runs) if signals.profile(_last(r)[1], 'cka')[0]]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    numbers = {}
    drawn = []
    for r in runs:
        step, row = _last(r)
        style = _style(runs, r)
        names, cka = signals.profile(row, 'cka')
        first_names, first = signals.profile(r.probe_rows()[min(r.probe_rows())], 'cka')
        drawn.append(names)
        ax.plot(_blocks(names), cka, marker='.', label=r.spec.label, **style)
        ax.plot(_blocks(first_names), first, ':', color=style['color'], lw=1)
        numbers[r.spec.name] = {'step': step, 'cka': cka, 'cka_first': first}
    ax.set_title('linear CKA(h_(k-1), h_k), last probe (dotted: first)', fontsize=10)
    ax.set_xlabel('block k (1 = first after the stem)')
    ax.set_ylabel('linear CKA')
    _mark_blocks(ax, drawn)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig9_cka', numbers)


def figure_distance(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 10: distance from init ||theta_t - theta_0|| / ||theta_0||: all parameters over
    training (left), each conv and dense layer at the last probe (right)."""
    runs = [r for r in _question_runs(runs) if len(r.series('init_distance/global')[0])]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    numbers = {}
    drawn = []
    for r in runs:
        style = _style(runs, r)
        steps, dist = r.series('init_distance/global')
        axes[0].plot(steps, dist, marker='.', label=r.spec.label, **style)
        step, row = _last(r)
        names, layers = signals.profile(row, 'init_distance')
        drawn.append(names)
        axes[1].semilogy(layers, marker='.', label=r.spec.label, **style)
        numbers[r.spec.name] = {
            'steps': steps.tolist(),
            'global': dist.tolist(),
            'last_step': step,
            'layers': layers,
        }
    axes[0].set_title('distance from init, all parameters', fontsize=10)
    axes[0].set_xlabel('step')
    axes[1].set_title('distance from init per layer, last probe', fontsize=10)
    axes[1].set_xlabel('conv / dense layer index (0 = stem conv, last = head)')
    axes[0].set_ylabel('||theta - theta_0|| / ||theta_0||')
    axes[1].set_ylabel('||W - W_0|| / ||W_0||')
    plots.mark_lines(axes[1], drawn)
    for ax in axes:
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig10_distance', numbers)


def figure_constructed(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 11: the constructed run. Left: training error over steps of the constructed run,
    its source (dotted line: the source's final error), and the random-init nets of its depth.
    Right: its added blocks over training: the change they make (median) and their layers'
    distance from the identity kernels (median)."""
    built = [r for r in runs if r.spec.source and r.spec.lr is None and r.rows]
    if not built:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    numbers = {}
    for b in built:
        source = next(r for r in runs if r.spec.name == b.spec.source)
        peers = [
            r
            for r in runs
            if not r.spec.source
            and r.spec.depth == b.spec.depth
            and (r.spec.norm, r.spec.seed) == (b.spec.norm, b.spec.seed)
        ]
        for r in [source, *peers, b]:
            steps, acc = r.series('train/accuracy')
            style = _style(runs, r)
            axes[0].plot(steps, 100 * (1 - acc), label=r.spec.label, **style)
            numbers.setdefault(
                r.spec.name, {'steps': steps.tolist(), 'train_error': (1 - acc).tolist()}
            )
        _, acc = source.series('train/accuracy')
        if len(acc):
            axes[0].axhline(100 * (1 - acc[-1]), color='k', ls=':', lw=1)
        drift = added_block_drift(b, source.spec.depth)
        steps = list(drift)
        change = [d['block_change_median'] for d in drift.values()]
        moved = [d['init_distance_median'] for d in drift.values()]
        axes[1].plot(steps, change, 'o-', color='tab:green', label='added blocks: block change')
        axes[1].plot(
            steps, moved, 's--', color='tab:olive', label='added layers: ||W - I|| / ||I||'
        )
        numbers[b.spec.name].update(
            added_steps=steps, added_block_change=change, added_init_distance=moved
        )
    axes[0].set_title('training error (dotted: the source net at its end)', fontsize=10)
    axes[0].set_xlabel('step')
    axes[0].set_ylabel('training error (%)')
    axes[1].set_title('how far the added identity blocks drift (medians)', fontsize=10)
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('relative change / distance')
    if not any(len(line.get_xdata()) for line in axes[1].get_lines()):
        axes[1].text(0.5, 0.5, 'no probe rows of the added blocks yet', ha='center',
                     transform=axes[1].transAxes, color='0.35')  # fmt: skip
        axes[1].set_xticks([])
        axes[1].set_yticks([])
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig11_constructed', numbers)


# ---------------------------------------------------------------------------------------------
# Figure 13: the constructed-solution sweep (`study.constructed_lrs`).

SWEEP_STYLES = {  # grid.SWEEP_NETS role -> line colour
    'built_plain': 'tab:red',
    'built_resnet': 'tab:blue',
    'restart_plain': 'tab:orange',
    'restart_resnet': 'tab:cyan',
    'restart_random': 'tab:gray',
}


def figure_sweep(sweep: list[dict], fig_dir: str) -> dict | None:
    """Fig. 13: one panel per lr of the constructed-solution sweep (first norm and seed): the
    training error (training-mode BN, the mean of each logged row) vs step of its five nets,
    each start's error (its source's final training error) a dashed line of its colour, and
    lambda_max at step 0 against 2/lr in the legend. `sweep`: per lr, {'lr', 'nets': {role:
    {'label', 'run': RunData, 'start_train_error'}}} (`findings.question.sweep_runs`)."""
    panels = [p for p in sweep if any(n['run'].rows for n in p['nets'].values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    numbers, top = {}, 0.0
    for ax, panel in zip(axes[0], panels):
        lr = panel['lr']
        for role, net in panel['nets'].items():
            run, color = net['run'], SWEEP_STYLES[role]
            steps, acc = run.series('train/accuracy')
            lam_steps, lam = run.series('hessian/lambda_max')
            lam0 = float(lam[0]) if len(lam) and lam_steps[0] == 0 else None
            sharp = f'lambda_max(0) {lam0:.3g}' if lam0 is not None else 'no lambda_max(0)'
            label = f'{net["label"]} ({sharp})'
            built = role.startswith('built')  # On top, bold: the restarts are their controls.
            style = {'marker': 'o', 'lw': 2, 'zorder': 3} if built else {'marker': 's', 'lw': 1}
            ax.plot(steps, 100 * (1 - acc), '-', ms=3, color=color, label=label, **style)
            start = net['start_train_error']
            if start is not None:
                ax.axhline(100 * start, color=color, ls='--', lw=1)
                top = max(top, 100 * start)
            if len(acc):
                top = max(top, 100 * float(np.max(1 - acc)))
            numbers[run.spec.name] = {
                'lr': lr,
                'steps': steps.tolist(),
                'train_error': (1 - acc).tolist(),
                'start_train_error': start,
                'lambda_max_step0': lam0,
                'two_over_lr': 2 / lr,
            }
        ax.set_title(f'lr {lr:g} (constant; 2/lr = {2 / lr:.3g})', fontsize=10)
        ax.set_xlabel('step of the restart')
        ax.set_ylabel('training error (%)')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, title='dashed: its start', title_fontsize=6)
    for ax in axes[0]:
        ax.set_ylim(0, min(100, max(5.0, 1.15 * top)))
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig13_sweep', numbers)


# ---------------------------------------------------------------------------------------------
# Figure 15: the `study.variants` runs beside the grid runs of their depth, norm and seed.


def figure_variants(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 15: training error (dashed: the logged rows' means, training-mode BN) and test
    error (bold, eval mode) vs step of each `study.variants` run and the grid runs of its
    depth, norm and seed; one panel per seed, the first norm (BN first); plain red, ResNet
    blue, a colour per variant label."""
    variants = [r for r in runs if r.spec.variant is not None and r.rows]
    if not variants:
        return None
    norm = _norms(variants)[0]
    variants = [r for r in variants if r.spec.norm == norm]
    keys = {(r.spec.depth, r.spec.seed) for r in variants}
    grid = [r for r in runs if r.spec.group and r.rows and r.spec.norm == norm
            and (r.spec.depth, r.spec.seed) in keys]  # fmt: skip
    drawn = sorted(grid, key=lambda r: r.spec.residual) + variants
    seeds = sorted({r.spec.seed for r in drawn})
    # Grid nets as in the other figures (plain red, ResNet blue), a variant's label its own.
    labels = list(dict.fromkeys(r.spec.label for r in variants))
    palette = ('tab:green', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:olive')
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4.2), squeeze=False)
    numbers = {}
    for ax, seed in zip(axes[0], seeds):
        for r in (r for r in drawn if r.spec.seed == seed):
            c = (
                palette[labels.index(r.spec.label) % len(palette)]
                if r.spec.variant
                else KIND_COLORS[r.spec.residual]
            )
            st, tr = r.series('train/accuracy')
            se, te = r.series('eval/accuracy')
            ax.plot(st, 100 * (1 - tr), '--', color=c, lw=0.8)
            ax.plot(se, 100 * (1 - te), '-', marker='o', color=c, lw=2, label=r.spec.label)
            numbers[r.spec.name] = {
                'train_steps': st.tolist(),
                'train_error': (1 - tr).tolist(),
                'test_steps': se.tolist(),
                'test_error': (1 - te).tolist(),
            }
        ax.set_title(f'seed {seed}, {norm_title(norm)}', fontsize=10)
        ax.set_xlabel('step')
        ax.set_ylabel('error (%)')
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title='bold: test, dashed: train', title_fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, 'fig15_variants', numbers)
