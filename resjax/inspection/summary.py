"""summary: the config, step and parameter table of each checkpoint."""

from __future__ import annotations

import json
import math

import flax
import jax
import numpy as np

from resjax import runs
from resjax.inspection import common
from resjax.inspection.common import Opts

PyTree = common.PyTree


def parameter_table(params: PyTree) -> list[dict]:
    """One row per layer in forward order: name, leaf shapes, parameter count, L2 norm of the
    layer's parameters (all leaves) and of its kernel (if any)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    rows: dict[str, dict] = {}
    for path, leaf in sorted(flat.items()):
        layer, name = path.rsplit('/', 1)
        row = rows.setdefault(layer, {'layer': layer, 'shapes': {}, 'count': 0, 'sq': 0.0})
        leaf = np.asarray(leaf, np.float64)
        row['shapes'][name] = list(leaf.shape)
        row['count'] += leaf.size
        row['sq'] += float(np.sum(leaf**2))
        if name == 'kernel':
            row['kernel_norm'] = float(np.sqrt(np.sum(leaf**2)))
    out = []
    for row in rows.values():
        row['norm'] = math.sqrt(row.pop('sq'))
        out.append(row)
    return out


def summary_numbers(run: runs.Run, opts: Opts) -> dict:
    """Config, step and parameter table (`parameter_table`) of the checkpoint."""
    del opts
    table = parameter_table(jax.device_get(run.state.params))
    return {
        'workdir': run.workdir,
        'step': run.step,
        'config': json.loads(run.config.to_json_best_effort()),
        'num_params': sum(r['count'] for r in table),
        'layers': table,
    }


def _summary_text(label: str, r: dict) -> str:
    lines = [
        f'\n== {label}: {r["workdir"]} step {r["step"]}, {r["num_params"]:,} parameters',
        f'{"layer":<34} {"shapes":<42} {"count":>9} {"||W||":>9}',
    ]
    for row in r['layers']:
        shapes = ' '.join(f'{k}{tuple(v)}' for k, v in row['shapes'].items())
        lines.append(f'{row["layer"]:<34} {shapes:<42} {row["count"]:>9,} {row["norm"]:>9.4f}')
    return '\n'.join(lines)


PROBE = common.Probe(summary_numbers, text=_summary_text)
