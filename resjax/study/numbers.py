"""Per-run numbers, each read straight off a run's metrics.jsonl."""

from __future__ import annotations

import dataclasses

import numpy as np

from resjax import config_lib, models
from resjax.probes import signals
from resjax.study.grid import RunSpec, read_rows, run_state


@dataclasses.dataclass
class RunData:
    """A run's spec, state and metrics rows (empty for a missing run)."""

    spec: RunSpec
    state: str
    rows: list[dict]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of every row holding `key`, in file order."""
        pairs = [(r['step'], r[key]) for r in self.rows if key in r]
        return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=float))

    def probe_rows(self) -> dict[int, dict]:
        """Signal-probe rows (those with `grad_norm/global`) by step."""
        return {int(r['step']): r for r in self.rows if 'grad_norm/global' in r}


def collect(specs: list[RunSpec]) -> list[RunData]:
    """Reads every run's state and metrics.jsonl."""
    return [RunData(s, run_state(s), read_rows(s.workdir)) for s in specs]


def run_numbers(run: RunData) -> dict[str, float | int | None]:
    """The per-run numbers findings are made of, each read straight off metrics.jsonl:

    - `final_train_error`: 1 - `train/accuracy` of the last training row (the mean over the
      last `train.log_every_steps` steps, BN in training mode, as the paper's Fig. 6 thin
      curves); `mean_train_error`: mean of 1 - `train/accuracy` over all training rows;
    - `final_test_error`: 1 - `eval/accuracy` of the last eval row;
    - `init_grad_ratio`: `signals.first_last_ratio` of the step-0 probe row (first conv's
      weight-gradient norm / last conv's), `init_act_grad_ratio` the same for ||dL/dh|| of
      the stem output / the last block's output;
    - `final_response_std`: mean over layers of `act_std` at the last probe step;
    - `final_lambda_max`, `final_two_over_lr`, `final_hessian_step`: the last sharpness probe;
      `max_sharpness_ratio`: max over probes of lambda_max / (2 / lr).
    """
    out: dict[str, float | int | None] = {'steps': run.spec.config.train.steps}
    _, acc = run.series('train/accuracy')
    out['final_train_error'] = float(1 - acc[-1]) if len(acc) else None
    out['mean_train_error'] = float(np.mean(1 - acc)) if len(acc) else None
    _, acc = run.series('eval/accuracy')
    out['final_test_error'] = float(1 - acc[-1]) if len(acc) else None
    probes = run.probe_rows()
    init = probes.get(0)
    out['init_grad_ratio'] = signals.first_last_ratio(init, 'grad_norm') if init else None
    out['init_act_grad_ratio'] = signals.first_last_ratio(init, 'act_grad_norm') if init else None
    if probes:
        last = probes[max(probes)]
        out['final_response_std'] = float(np.mean(signals.profile(last, 'act_std')[1]))
        out['final_probe_step'] = max(probes)
    else:
        out['final_response_std'] = out['final_probe_step'] = None
    steps, lam = run.series('hessian/lambda_max')
    _, two = run.series('hessian/two_over_lr')
    if len(lam):
        out['final_lambda_max'] = float(lam[-1])
        out['final_two_over_lr'] = float(two[-1])
        out['final_hessian_step'] = int(steps[-1])
        out['max_sharpness_ratio'] = float(np.max(lam / two))
    else:
        for k in (
            'final_lambda_max',
            'final_two_over_lr',
            'final_hessian_step',
            'max_sharpness_ratio',
        ):
            out[k] = None
    return out


def added_blocks(row: dict, source_depth: int) -> list[str]:
    """The blocks of a probe row that a constructed run added to its CIFAR-family source of
    depth `source_depth`: in each stage, those past the source's blocks in that stage (its
    layout, `models.model_layout`), read off the row's `block_change/` names
    (`models.layout.parse_name`)."""
    source = config_lib.default_config().model
    source.depth = source_depth
    per_stage = {s: len(b) for s, b in models.model_layout(source).stages().items()}
    names = {k.split('/', 1)[1] for k in row if k.startswith('block_change/')}
    parts = {n: models.layout.parse_name(n) for n in names}
    return sorted(
        n for n, p in parts.items() if p is not None and p.index > per_stage.get(p.stage, 0)
    )


def added_block_drift(run: RunData, source_depth: int) -> dict[int, dict[str, float]]:
    """{probe step: medians over a constructed run's added blocks of `block_change` (the
    change each makes to its input, 0 at step 0 in eval mode) and of their layers'
    `init_distance` (relative distance from the identity kernels)}."""
    out = {}
    for step, row in sorted(run.probe_rows().items()):
        added = added_blocks(row, source_depth)
        change = [row[f'block_change/{b}'] for b in added]
        moved = [
            v for k, v in row.items() if k.startswith('init_distance/') and k.split('/')[1] in added
        ]
        if change and moved:
            out[step] = {
                'block_change_median': float(np.median(change)),
                'init_distance_median': float(np.median(moved)),
            }
    return out
