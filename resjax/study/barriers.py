"""Figure 14: loss barriers of the deepest plain and residual nets (the question's (c)).

Two straight lines per net, each scored with the inspection library's interpolation
(`resjax.inspection.interpolate`) with BatchNorm statistics RECOMPUTED at every point
(`objective.recomputed_batch_stats` on the first `bn_examples` training examples, then eval
mode: an interpolated statistic is not the function at that point), alpha on [0, 1]:

- init -> final: from the run's exact step-0 state to its final checkpoint (Goodfellow et al.
  2015; Lucas et al. 2021): a barrier means SGD left its init's basin;
- run <-> partner (`study.lmc`): from the LMC partner's final checkpoint (same init, another
  data order) to the run's (Frankle et al. 2020): no barrier means SGD from one init ends in
  one linearly connected basin whatever the data order.

Loss and error are over the probe examples (the first `examples` training examples of the
run's epoch-0 order, unaugmented in memory); barrier = max over alpha of the curve minus the
chord between its end points (`interpolate.barrier`), loss in nats, error a fraction.
`<workdir>/inspect/barriers/barriers.json` holds, per grid run name, 'init' and 'lmc' (None
without a partner) with the probe's numbers and curves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resjax import plots, runs  # noqa: E402
from resjax.study.grid import RunSpec  # noqa: E402

FIGURE = 'barriers'
CURVES = ('alphas', 'loss', 'accuracy')


def barrier_options(opts: Any) -> Any:
    """The study's inspection options as the barrier lines use them: BN statistics
    recomputed (eval mode), alpha on [0, 1], from the init (no `to`)."""
    return dataclasses.replace(
        opts, bn_stats='recompute', bn_mode='eval', alpha_min=0.0, alpha_max=1.0, to=None
    )


def _line(run: runs.Run, opts: Any, other: runs.Run | None) -> dict:
    from resjax.inspection import interpolate  # The probes: only where a figure is drawn.

    r = interpolate.interpolate_numbers(run, opts, other)
    return {k: (np.asarray(v).tolist() if k in CURVES else v) for k, v in r.items()}


def inspect_barriers(ready: list[RunSpec], out_dir: str, opts: Any) -> dict:
    """Computes both lines of every finished grid run in `ready` (the partner line when its
    partner is in `ready` too), draws figure 14 into `out_dir/barriers.png` and writes its
    numbers beside it; returns them ({grid run name: {'label', 'residual', 'seed', 'partner',
    'init', 'lmc'}})."""
    opts = barrier_options(opts)
    partners = {(s.depth, s.residual, s.norm, s.seed): s for s in ready if s.data_seed is not None}
    numbers = {}
    for spec in (s for s in ready if s.data_seed is None):
        run = runs.load_run(spec.workdir, None, opts.batch)
        partner = partners.get((spec.depth, spec.residual, spec.norm, spec.seed))
        other = runs.load_run(partner.workdir, None, opts.batch) if partner else None
        numbers[spec.name] = {
            'label': spec.label,
            'residual': spec.residual,
            'seed': spec.seed,
            'partner': partner.name if partner else None,
            'init': _line(run, opts, None),
            'lmc': _line(run, opts, other) if other else None,
        }
    document = {'settings': dataclasses.asdict(opts), 'runs': numbers}
    plots.save_figure(draw_barriers(numbers, opts), out_dir, FIGURE, document)
    return numbers


def draw_barriers(numbers: dict, opts: Any) -> Any:
    """Loss (top) and error (bottom) along init -> final (left) and partner -> run (right):
    plain red, residual blue, the first seed bold; each line's chord dashed and its barrier
    marked by a vertical segment from the chord to the curve."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, squeeze=False)
    first = min((n['seed'] for n in numbers.values()), default=0)
    for n in numbers.values():
        color = 'tab:blue' if n['residual'] else 'tab:red'
        bold = n['seed'] == first
        for col, key in enumerate(('init', 'lmc')):
            line = n[key]
            if line is None:
                continue
            a = np.asarray(line['alphas'])
            curves = (np.asarray(line['loss']), 1 - np.asarray(line['accuracy']))
            for row, values in enumerate(curves):
                ax = axes[row, col]
                barrier = line['max_bump_over_chord'] if row == 0 else line['error_barrier']
                label = f'{n["label"]} s{n["seed"]}: barrier {barrier:.3g}' + (
                    ' nats' if row == 0 else ''
                )
                ax.plot(a, values, color=color, lw=2 if bold else 0.8, label=label)
                chord = values[0] + a * (values[-1] - values[0])
                ax.plot(a, chord, color=color, lw=0.6, ls='--')
                i = int(np.argmax(values - chord))
                if values[i] > chord[i]:
                    ax.vlines(a[i], chord[i], values[i], color=color, lw=1.5, ls=':')
    for col, title in enumerate(('init (0) -> final (1)', 'LMC partner (0) -> run (1)')):
        axes[0, col].set_title(title, fontsize=10)
        axes[1, col].set_xlabel('alpha')
        for row in (0, 1):
            axes[row, col].grid(True, alpha=0.3)
            if axes[row, col].lines:
                axes[row, col].legend(fontsize=7)
            else:
                axes[row, col].text(0.5, 0.5, 'no LMC partner (study.lmc)', ha='center',
                                    transform=axes[row, col].transAxes)  # fmt: skip
    axes[0, 0].set_ylabel('mean cross-entropy (nats)')
    axes[1, 0].set_ylabel('error (fraction)')
    fig.suptitle(
        f'Loss and error on the first {opts.examples} training examples; BN eval mode, its '
        f'statistics recomputed on the first {opts.bn_examples} training examples at each '
        'point\ndashed: the chord, dotted: the barrier',
        fontsize=9,
    )
    fig.tight_layout()
    return fig
