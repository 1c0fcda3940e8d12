"""blocks: the block probes of a checkpoint (branch ratios, block change, CKA, distance from
init)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from resjax import models, plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.probes import blocks, signals


def block_numbers(run: runs.Run, batch: dict, bn_mode: str = 'eval') -> dict[str, Any]:
    """The block probes (`resjax.probes.blocks`) of this checkpoint on one batch: every
    `branch_ratio/`, `block_change/`, `cka/` and `init_distance/` value (from the run's step-0
    parameters, a constructed run's included) and the all-blocks CKA matrix (`cka_names`,
    `cka_matrix`). BN in `bn_mode` ('train': this batch's statistics, running ones untouched)."""
    variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
    mutable = ['intermediates'] + (['batch_stats'] if bn_mode == 'train' else [])
    _, new_vars = run.model.apply(
        variables, batch['image'], train=bn_mode == 'train', mutable=mutable
    )
    inter = new_vars['intermediates']
    layout = models.model_layout(run.config.model)
    out = {k: float(v) for k, v in jax.device_get(blocks.block_signals(inter, layout)).items()}
    initial = common.initial_variables(run).params
    moved = blocks.init_distance(run.state.params, initial)
    out.update({k: float(v) for k, v in jax.device_get(moved).items()})
    names, matrix = blocks.cka_matrix(inter, layout)
    out['cka_names'] = names
    out['cka_matrix'] = np.asarray(matrix, np.float64).tolist()
    return out


def blocks_numbers(run: runs.Run, opts: Opts) -> dict[str, Any]:
    """`block_numbers` on the checkpoint's first `examples` probe examples as one batch, BN in
    `bn_mode`."""
    ex = runs.train_examples(run, opts.examples)
    batch = {'image': jnp.asarray(ex['image']), 'label': jnp.asarray(ex['label'])}
    return {
        'step': run.step,
        'bn_mode': opts.bn_mode,
        'examples': len(ex['label']),
        **block_numbers(run, batch, opts.bn_mode),
    }


def _blocks_text(label: str, r: dict) -> str:
    return (
        f'{label}: median block change {np.median(signals.profile(r, "block_change")[1]):.3g}, '
        f'median consecutive CKA {np.median(signals.profile(r, "cka")[1]):.3g}, distance from '
        f'init {r["init_distance/global"]:.3g}'
    )


def draw_blocks(runs: dict, opts: Opts) -> Figure:
    """The CKA matrix of every pair of stem and block outputs (top row, one panel per run); per
    block the change it makes and its residual branch ratio, and per layer its distance from
    init (bottom row; a panel only where some run has the metric). Blocks are numbered as in
    the CKA matrix: 0 = the stem's output, k = block k's."""
    panels = [
        ('block_change', 'change a block makes', '||h_k - P h_(k-1)|| / ||P h_(k-1)||', 'block'),
        ('branch_ratio', 'residual branch vs shortcut', '||F(x)|| / ||shortcut(x)||', 'block'),
        ('init_distance', 'distance from init', '||W - W_0|| / ||W_0||', 'layer'),
    ]
    panels = [p for p in panels if any(signals.profile(r, p[0])[0] for r in runs.values())]
    columns = max(len(runs), len(panels), 1)
    fig = plt.figure(figsize=(4.2 * columns, 8), layout='constrained')
    top, bottom = fig.subfigures(2, 1)
    for ax, (label, r) in zip(top.subplots(1, len(runs), squeeze=False)[0], runs.items()):
        im = ax.imshow(np.array(r['cka_matrix']), vmin=0, vmax=1, cmap='magma', origin='lower')
        ax.set_title(f'{label}: linear CKA of block outputs (dotted: stages)', fontsize=9)
        ax.set_xlabel('block k (0 = stem)')
        ax.set_ylabel('block k (0 = stem)')
        plots.mark_stages(ax, r['cka_names'], label=False)
        plots.mark_stages(ax, r['cka_names'], axis='y', label=False)
        top.colorbar(im, ax=ax, fraction=0.046, label='linear CKA')
    axes = bottom.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (prefix, title, ylabel, kind) in zip(axes, panels):
        drawn = []
        for color, (label, r) in zip(plots.colors(), runs.items()):
            names, values = signals.profile(r, prefix)
            if not values:
                continue
            xs = (
                [plots.block_index(n, j) for j, n in enumerate(names)]
                if kind == 'block'
                else list(range(len(values)))
            )
            ax.plot(xs, values, '.-', color=color, label=label)
            drawn.append(names)
        if prefix != 'init_distance':
            ax.set_yscale('log')
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.set_xlabel('block k (1 = first after the stem)' if kind == 'block'
                      else 'layer index (0 = stem conv, last = head)')  # fmt: skip
        blocks = lambda names: [plots.block_index(n, j) for j, n in enumerate(names)]  # noqa: E731
        plots.mark_lines(ax, drawn, blocks if kind == 'block' else None)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    examples = next(iter(runs.values()))['examples'] if runs else None
    fig.suptitle(f'Block probes on {examples} training examples, BN {opts.bn_mode} mode',
                 fontsize=10)  # fmt: skip
    return fig


PROBE = common.Probe(blocks_numbers, draw_blocks, text=_blocks_text)
