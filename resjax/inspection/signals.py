"""signals: the training loop's per-layer signal probes on a checkpoint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure

from resjax import plots, runs, steps, xla
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.probes import signals


def signal_metrics(run: runs.Run, batch: dict) -> dict[str, float]:
    """The training loop's per-layer signal probes on this checkpoint and one batch, BN in
    training mode (running statistics not kept): `grad_norm/`, `param_norm/`, `act_*`,
    `relu_zero/`, `gsc/`, `grad_norm/global`, `probe/loss` (update ratios need an update and
    are absent)."""

    @xla.jit
    def run_probe(params, batch_stats, batch):
        loss, _, new_vars, grads, act_grads = steps.loss_and_grads(
            run.model, params, batch_stats, batch, probes=True
        )
        out = signals.weight_signals(params, grads)
        out.update(
            signals.activation_signals(
                new_vars['intermediates'], act_grads, run.model.preactivation
            )
        )
        out['grad_norm/global'] = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(grads)))
        out['probe/loss'] = loss
        return out

    out = run_probe(run.state.params, run.state.batch_stats, batch)
    return {k: float(v) for k, v in jax.device_get(out).items()}


def signals_numbers(run: runs.Run, opts: Opts) -> dict[str, float]:
    """`signal_metrics` on the checkpoint's first `batch` probe examples (one unpadded batch)."""
    ex = runs.train_examples(run, min(opts.batch, opts.examples or opts.batch))
    return signal_metrics(
        run, {'image': jnp.asarray(ex['image']), 'label': jnp.asarray(ex['label'])}
    )


def _signals_text(label: str, r: dict) -> str:
    return (
        f'{label}: grad norm first/last conv {signals.first_last_ratio(r):.3g}, loss '
        f'{r["probe/loss"]:.4f}'
    )


def draw_signals(runs: dict, opts: Opts) -> dict[str, tuple[Figure, dict]]:
    """The `plot_signals.py` profiles of each checkpoint: {'signals/<signal>_profile':
    (figure, its numbers)}."""
    rows = {label: {r['step']: r} for label, r in runs.items()}
    return {
        f'signals/{s}_profile': plots.profile_figure(rows, s, None)
        for s in ('grad_norm', 'act_grad_norm', 'act_std', 'gsc')
    }


PROBE = common.Probe(signals_numbers, draw_signals, text=_signals_text)
