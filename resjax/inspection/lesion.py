"""lesion: the test error with each residual branch removed in turn (Veit et al. 2016)."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from resjax import models, plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts

PyTree = common.PyTree


def residual_blocks(run: runs.Run) -> list[dict]:
    """The blocks whose residual branch a lesion can remove (none for plain nets), in forward
    order, each with its shortcut kind: 'identity', 'identity_pad' (option A: subsample and
    zero-pad, parameter-free) or 'projection' (a 1x1 conv shortcut, kept)."""
    return [
        {'block': b.name, 'shortcut': b.shortcut, 'last_conv': b.layers[-1].rsplit('/', 1)[-1]}
        for b in models.model_layout(run.config.model).residual_blocks()
    ]


def lesion_params(run: runs.Run, block: str) -> PyTree:
    """The run's parameters with `block`'s residual branch removed, its shortcut kept
    (`resjax.models.layout.lesion`: exact for every block of resjax's models)."""
    layout = models.model_layout(run.config.model)
    if block not in {b.name for b in layout.residual_blocks()}:
        raise common.InspectError(f'{block!r} is not a residual block of {run.workdir!r}')
    return models.layout.lesion(layout, run.state.params, block)


def lesion_numbers(run: runs.Run, opts: Opts) -> dict:
    """Test error and loss (BN eval mode, the whole eval split) of the intact net and with each
    residual block's residual branch removed in turn (Veit et al. 2016)."""
    del opts
    batches = runs.test_batches(run)
    base = common.evaluate(run, batches)
    blocks = residual_blocks(run)
    rows = []
    for i, b in enumerate(blocks):
        lesioned = dataclasses.replace(
            run, state=run.state.replace(params=lesion_params(run, b['block']))
        )
        e = common.evaluate(lesioned, batches)
        rows.append({**b, 'test_error': 1 - e['accuracy'], 'test_loss': e['loss']})
        logging.info('%s lesion %d/%d: %s error %.4f', run.label, i + 1, len(blocks),
                     b['block'], 1 - e['accuracy'])  # fmt: skip
    return {
        'step': run.step,
        'bn_mode': 'eval',
        'test_error_intact': 1 - base['accuracy'],
        'test_loss_intact': base['loss'],
        'blocks': rows,
        'note': None if blocks else 'plain network: no residual blocks to remove',
    }


def _lesion_text(label: str, r: dict) -> str | None:
    return None if r['blocks'] else f'{label}: plain network, no residual blocks to remove'


def draw_lesion(runs: dict, opts: Opts) -> Figure:
    """Test error with one residual branch removed: one bar per block (hatched: a downsampling
    or projection shortcut), one colour per run, dashed: the intact net."""
    most = max(len(r['blocks']) for r in runs.values())
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * most * len(runs)), 4.5), layout='constrained')
    lesioned = [label for label, r in runs.items() if r['blocks']]
    width = 0.8 / max(1, len(lesioned))
    names: list[list[str]] = []
    for color, (label, r) in zip(plots.colors(), runs.items()):
        if not r['blocks']:
            continue
        names.append([b['block'] for b in r['blocks']])
        # Block k at x = k, as the block probes number them (0 = the stem, never lesioned).
        xs = np.array([plots.block_index(b['block'], j) for j, b in enumerate(r['blocks'])])
        xs = xs + (lesioned.index(label) - (len(lesioned) - 1) / 2) * width
        bars = ax.bar(xs, [b['test_error'] for b in r['blocks']], width, color=color, label=label)
        for bar, b in zip(bars, r['blocks']):
            if b['shortcut'] != 'identity':
                bar.set_hatch('//')
        ax.axhline(r['test_error_intact'], color=color, ls='--', lw=1, label=f'{label} intact')
    ax.set_xlabel(
        'removed block k (1 = first block after the stem)\n'
        'hatched: a downsampling or projection shortcut'
    )
    plots.mark_lines(ax, names, lambda ns: [plots.block_index(n, j) for j, n in enumerate(ns)])
    for label in (label for label in runs if label not in lesioned):
        ax.plot([], [], ' ', label=f'{label}: no residual blocks')
    ax.margins(y=0.12)  # Room for the stage names above the bars.
    ax.set_ylabel('test error')
    ax.set_title('Lesion: one residual branch removed at a time (BN eval mode)')
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    return fig


PROBE = common.Probe(lesion_numbers, draw_lesion, timed=True, text=_lesion_text)
