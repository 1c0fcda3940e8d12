"""lesion: the test error with each block removed in turn (Veit et al. 2016): a residual block's
branch removed (its shortcut kept), and, as the contrast Veit et al. draw, a plain block that
keeps the shape replaced by the identity."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from resjax import construct, models, plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts

PyTree = common.PyTree


def lesion_blocks(run: runs.Run) -> list[dict]:
    """The blocks a lesion can remove, in forward order: every residual block (its branch;
    `shortcut` 'identity', 'identity_pad' (option A: subsample and zero-pad, parameter-free) or
    'projection' (a 1x1 conv, kept)), and every plain block of stride 1 with as many channels
    in as out (replaced by the identity; `shortcut` None)."""
    out = []
    for b in models.model_layout(run.config.model).blocks:
        if b.residual or (b.stride == 1 and b.channels_in == b.channels_out):
            out.append({'block': b.name, 'shortcut': b.shortcut,
                        'lesion': 'branch removed' if b.residual else 'identity'})  # fmt: skip
    return out


def lesion_variables(run: runs.Run, block: str, moments: dict | None = None) -> PyTree:
    """The run's {'params', 'batch_stats'} with `block` removed: a residual block's branch
    removed, its shortcut kept (`resjax.models.layout.lesion`: exact for every block of resjax's
    models); a plain block replaced by the identity (`construct.replace_by_identity`, its BN set
    from `moments`, the eval-mode statistics of the net's block outputs over training examples:
    exact in eval mode)."""
    layout = models.model_layout(run.config.model)
    variables = common.point(run.state)
    if block not in {b['block'] for b in lesion_blocks(run)}:
        raise common.InspectError(
            f'{block!r} is not a block a lesion can remove in {run.workdir!r}'
        )
    spec = layout.block(block)
    if spec.residual:
        return {**variables, 'params': models.layout.lesion(layout, run.state.params, block)}
    return construct.replace_by_identity(layout, variables, block, moments)


def lesion_numbers(run: runs.Run, opts: Opts) -> dict:
    """Test error and loss (BN eval mode, the first `eval_examples` of the eval split, 0 = all)
    of the intact net and with each block of `lesion_blocks` removed in turn."""
    batches = runs.test_batches(run, opts.eval_examples)
    base = common.evaluate(run, batches)
    blocks = lesion_blocks(run)
    moments = None
    if any(not b['shortcut'] for b in blocks):
        images = runs.train_examples(run, construct.CALIBRATION_EXAMPLES)['image']
        moments = construct.block_input_moments(run.model, common.point(run.state), images)
    rows = []
    for i, b in enumerate(blocks):
        v = lesion_variables(run, b['block'], moments)
        lesioned = dataclasses.replace(
            run, state=run.state.replace(params=v['params'], batch_stats=v['batch_stats'])
        )
        e = common.evaluate(lesioned, batches)
        rows.append({**b, 'test_error': 1 - e['accuracy'], 'test_loss': e['loss']})
        logging.info('%s lesion %d/%d: %s error %.4f', run.label, i + 1, len(blocks),
                     b['block'], 1 - e['accuracy'])  # fmt: skip
    return {
        'step': run.step,
        'bn_mode': 'eval',
        'test_examples': int(sum(float(np.sum(b['mask'])) for b in batches)),
        'test_error_intact': 1 - base['accuracy'],
        'test_loss_intact': base['loss'],
        'blocks': rows,
        'note': None if blocks else 'no block keeps its shape: nothing to remove',
    }


def _lesion_text(label: str, r: dict) -> str | None:
    return None if r['blocks'] else f'{label}: no block a lesion can remove'


def draw_lesion(runs: dict, opts: Opts) -> Figure:
    """Test error with one block removed: one bar per block (hatched: a residual block with a
    downsampling or projection shortcut), one colour per run, dashed: the intact net."""
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
            if b['shortcut'] not in ('identity', None):
                bar.set_hatch('//')
        ax.axhline(r['test_error_intact'], color=color, ls='--', lw=1, label=f'{label} intact')
    ax.set_xlabel(
        'removed block k (1 = first block after the stem)\n'
        'hatched: a downsampling or projection shortcut'
    )
    plots.mark_lines(ax, names, lambda ns: [plots.block_index(n, j) for j, n in enumerate(ns)])
    for label in (label for label in runs if label not in lesioned):
        ax.plot([], [], ' ', label=f'{label}: no block to remove')
    ax.margins(y=0.12)  # Room for the stage names above the bars.
    ax.set_ylabel('test error')
    ax.set_title(
        'Lesion: one block removed at a time, BN eval mode\n(a residual block: its branch; '
        'a plain block: replaced by the identity)',
        fontsize=9,
    )
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    return fig


PROBE = common.Probe(lesion_numbers, draw_lesion, timed=True, text=_lesion_text)
