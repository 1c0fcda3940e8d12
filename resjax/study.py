"""The plain-vs-residual study: a grid of training runs, the figures that compare them, and a
report whose every number is computed from the runs.

A study config is an ordinary training config (the grid's *base*) plus `config.study`:

- `study.depths`, `study.residual`, `study.norms`, `study.seeds`: the grid, a product; each
  point is one run, `model.depth`, `model.residual`, `model.norm` and `seed` set on the base.
- `study.exclude`: selectors (below) of grid points left out, e.g. `'depth=110 residual=false'`
  (the paper has ResNet-110 but no plain-110).
- `study.overrides`: per-run changes, each `'<selector> -> <key>=<value> [<key>=<value> ...]'`,
  e.g. `'norm=none -> train.lr=0.02'`, applied in order to the runs the selector matches. A
  selector is space-separated `depth=`, `residual=`, `norm=`, `seed=` terms, all of which
  must match (`*` alone matches every run).
- `study.degradation_margin`: the rule that decides "degradation reproduced" (`findings`).
- `study.inspect`: sizes of the inspection figures (the inspection library's `Options`) and
  which of them to draw (`figures`).

Layout of a study workdir: `runs/<name>/` (ordinary resjax workdirs, `<name>` e.g.
`plain56_bn_s0`), `inspect/<figure>/` (the inspection library's outputs), `figures/`
(PNG + JSON each), `status.json` (state and wall time of each run), `findings.json`,
`report.md`, `report.html` (self-contained: figures embedded as base64 PNGs).

A run is *finished* when its metrics.jsonl has a row at `train.steps` holding eval metrics;
re-running a study skips finished runs, resumes partial ones (`train_and_evaluate` resumes
from the latest checkpoint) and skips runs that stopped on a non-finite loss (marked by a
`DIVERGED` file in their workdir) unless told to retry them. Findings use finished runs only;
figures draw whatever rows exist.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import matplotlib
import ml_collections
import numpy as np
from absl import logging

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from resjax import plots, train  # noqa: E402
from resjax.logs import format_seconds  # noqa: E402
from resjax.metrics import read_metrics  # noqa: E402
from resjax.probes import signals  # noqa: E402
from resjax.study_config import INSPECT_FIGURES, default_study_config  # noqa: E402

SELECTOR_KEYS = ('depth', 'residual', 'norm', 'seed')
# study.inspect keys passed to the inspection library's Options (the rest are study's own).
INSPECT_OPTIONS = (
    'examples',
    'batch',
    'bn_mode',
    'seed',
    'lanczos_order',
    'slq_draws',
    'grid',
    'range',
    'chunk',
)
DIVERGED = 'DIVERGED'


class StudyError(ValueError):
    """A study config or workdir that cannot run; the message is one line naming the fix."""


# ---------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class Override:
    """One `study.overrides` entry: set `assignments` on runs matching every selector term."""

    selector: dict[str, str]
    assignments: dict[str, Any]

    def matches(self, depth: int, residual: bool, norm: str, seed: int) -> bool:
        """Whether a run with these grid values is selected."""
        values = {
            'depth': str(depth),
            'residual': str(residual).lower(),
            'norm': norm,
            'seed': str(seed),
        }
        return all(values[k] == v for k, v in self.selector.items())


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() not in ('true', 'false'):
            raise StudyError(f'study.overrides: {key}={text!r} must be true or false')
        return text.lower() == 'true'
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise StudyError(
                    f'study.overrides: {key}={text!r} is not a {kind.__name__}'
                ) from None
    if isinstance(current, str):
        return text
    raise StudyError(f'study.overrides: {key} holds a {type(current).__name__}; not overridable')


def parse_selector(text: str, where: str) -> dict[str, str]:
    """`'depth=56 residual=false'` -> {'depth': '56', 'residual': 'false'}; `*` -> {}."""
    selector = {}
    for term in text.split():
        if term == '*':
            continue
        k, sep, v = term.partition('=')
        if not sep or k not in SELECTOR_KEYS:
            raise StudyError(
                f'{where}: selector term {term!r}; use {"=, ".join(SELECTOR_KEYS)}= or *'
            )
        selector[k] = v.lower() if k == 'residual' else v
    if not text.strip():
        raise StudyError(f'{where}: empty selector; use * to select every run')
    return selector


def parse_override(text: str, base: ml_collections.ConfigDict) -> Override:
    """Parses `'<selector> -> key=value ...'` against the base config (keys must exist)."""
    if '->' not in text:
        raise StudyError(f'study.overrides entry {text!r}: use "<selector> -> <key>=<value>"')
    left, right = (part.strip() for part in text.split('->', 1))
    selector = parse_selector(left, f'study.overrides entry {text!r}')
    assignments = {}
    for term in right.split():
        key, sep, v = term.partition('=')
        if not sep:
            raise StudyError(f'study.overrides entry {text!r}: {term!r} is not key=value')
        node, *path = key.split('.')
        try:
            current = base[node]
            for p in path:
                current = current[p]
        except (KeyError, AttributeError, TypeError):
            raise StudyError(
                f'study.overrides entry {text!r}: unknown config key {key!r}'
            ) from None
        if node == 'study' or isinstance(current, ml_collections.ConfigDict):
            raise StudyError(f'study.overrides entry {text!r}: {key!r} is not a training key')
        assignments[key] = _parse_value(v, current, key)
    if not assignments:
        raise StudyError(f'study.overrides entry {text!r} sets nothing')
    return Override(selector, assignments)


def validate_study_config(config: ml_collections.ConfigDict) -> None:
    """Raises StudyError (one line) for a config that is not a study: no `study` block,
    unknown keys in it, empty or impossible grid values, bad overrides or inspection sizes."""
    if 'study' not in config:
        raise StudyError(
            'the config has no `study` block; use configs/study_digits.py or one like it'
        )
    s = config.study
    known = set(default_study_config().keys())
    unknown = sorted(set(s.keys()) - known)
    if unknown:
        raise StudyError(f'unknown study key(s) {unknown}; known: {sorted(known)}')
    unknown = sorted(set(s.inspect.keys()) - set(default_study_config().inspect.keys()))
    if unknown:
        raise StudyError(f'unknown study.inspect key(s) {unknown}')
    for key in ('depths', 'residual', 'norms', 'seeds'):
        if not isinstance(s[key], tuple | list) or not s[key]:
            raise StudyError(f'study.{key}={s[key]!r} must be a non-empty tuple')
    for d in s.depths:
        if not isinstance(d, int) or isinstance(d, bool):
            raise StudyError(f'study depth {d!r} is not an integer')
    if any(not isinstance(r, bool) for r in s.residual):
        raise StudyError(f'study.residual={s.residual!r} must hold True and/or False')
    bad = [n for n in s.norms if n not in ('batch', 'none')]
    if bad:
        raise StudyError(f'study.norms has {bad}; use batch and/or none')
    if any(not isinstance(x, int) or isinstance(x, bool) for x in s.seeds):
        raise StudyError(f'study.seeds={s.seeds!r} must hold integers')
    for name in (k for k in tuple(s.inspect.figures)):
        if name not in INSPECT_FIGURES:
            raise StudyError(f'study.inspect.figures has {name!r}; use some of {INSPECT_FIGURES}')
    if s.inspect.max_depth < 0:
        raise StudyError(f'study.inspect.max_depth={s.inspect.max_depth} must be >= 0')
    for key in ('examples', 'batch', 'lanczos_order', 'slq_draws', 'grid', 'chunk'):
        if s.inspect[key] <= 0:
            raise StudyError(f'study.inspect.{key}={s.inspect[key]} must be positive')
    if s.inspect.grid < 3:
        raise StudyError(f'study.inspect.grid={s.inspect.grid} must be at least 3')
    if s.inspect.bn_mode not in ('eval', 'train'):
        raise StudyError(f'study.inspect.bn_mode={s.inspect.bn_mode!r}; use eval or train')
    if not 0 <= s.degradation_margin < 1:
        raise StudyError(f'study.degradation_margin={s.degradation_margin} must be in [0, 1)')
    for text in s.overrides:
        parse_override(text, config)
    for text in s.exclude:
        parse_selector(text, f'study.exclude entry {text!r}')


# ---------------------------------------------------------------------------------------------
# Grid.


@dataclasses.dataclass
class RunSpec:
    """One run of the grid: its grid values, its resolved training config and its workdir."""

    name: str
    depth: int
    residual: bool
    norm: str
    seed: int
    config: ml_collections.ConfigDict
    workdir: str

    @property
    def label(self) -> str:
        """'plain-56', 'ResNet-20 (no BN)', with ', seed s' when seeds differ."""
        kind = 'ResNet' if self.residual else 'plain'
        return f'{kind}-{self.depth}' + (' (no BN)' if self.norm == 'none' else '')

    @property
    def group(self) -> tuple[int, bool, str]:
        """The grid point without the seed: runs of one group are averaged in findings."""
        return (self.depth, self.residual, self.norm)


def run_name(depth: int, residual: bool, norm: str, seed: int) -> str:
    """`plain56_bn_s0`, `resnet20_nobn_s1`: the run's directory under `<workdir>/runs/`."""
    return (
        f'{"resnet" if residual else "plain"}{depth}_{"bn" if norm == "batch" else "nobn"}_s{seed}'
    )


def expand_grid(config: ml_collections.ConfigDict, workdir: str) -> list[RunSpec]:
    """Every run of the study (the grid's product less `study.exclude`) in training order:
    BN nets first (the paper's setting), then by depth, plain before residual, then seed. Each
    run's config is the base (without `study`) with the grid values and matching overrides
    applied, validated as a training config.

    Raises StudyError naming the run whose config cannot train.
    """
    validate_study_config(config)
    s = config.study
    base = {k: v for k, v in config.to_dict().items() if k != 'study'}
    overrides = [parse_override(t, config) for t in s.overrides]
    exclude = [Override(parse_selector(t, 'study.exclude'), {}) for t in s.exclude]
    points = [
        p
        for p in set(itertools.product(s.depths, s.residual, s.norms, s.seeds))
        if not any(e.matches(*p) for e in exclude)
    ]
    order = {'batch': 0, 'none': 1}
    specs = []
    for depth, residual, norm, seed in sorted(
        points, key=lambda p: (order[p[2]], p[0], p[1], p[3])
    ):
        c = ml_collections.ConfigDict(base)
        c.model.depth, c.model.residual, c.model.norm, c.seed = depth, residual, norm, seed
        for o in overrides:
            if o.matches(depth, residual, norm, seed):
                for key, value in o.assignments.items():
                    *path, leaf = key.split('.')
                    node = c
                    for p in path:
                        node = node[p]
                    node[leaf] = value
        name = run_name(depth, residual, norm, seed)
        try:
            train.validate_config(c)
        except train.ConfigError as e:
            raise StudyError(f'run {name}: {e}') from None
        specs.append(
            RunSpec(
                name, depth, residual, norm, seed, c.lock(), os.path.join(workdir, 'runs', name)
            )
        )
    return specs


def run_state(spec: RunSpec) -> str:
    """'finished' (a row at train.steps with eval metrics), 'diverged' (a DIVERGED mark),
    'partial' (some metrics) or 'missing'."""
    if os.path.exists(os.path.join(spec.workdir, DIVERGED)):
        return 'diverged'
    rows = _rows(spec.workdir)
    if any(r['step'] == spec.config.train.steps and 'eval/accuracy' in r for r in rows):
        return 'finished'
    return 'partial' if rows else 'missing'


def _rows(workdir: str) -> list[dict]:
    try:
        return read_metrics(workdir)
    except (OSError, ValueError):
        return []


# ---------------------------------------------------------------------------------------------
# Running.


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    report_only: bool = False,
    retry_diverged: bool = False,
    trainer: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
) -> dict:
    """Trains every unfinished run of the grid (one after another, in this process), draws the
    inspection figures of the finished deepest nets, and writes the report. Returns what
    `write_report` returns.

    `report_only` trains and inspects nothing: the report shows what exists and lists what is
    missing. `trainer` replaces `resjax.train.train_and_evaluate` (tests). Raises StudyError
    for a bad config or an unusable workdir, before anything compiles.
    """
    specs = expand_grid(config, workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise StudyError(f'workdir {workdir!r} cannot be created ({e.strerror})') from None
    if not report_only:
        if train_runs(specs, workdir, retry_diverged, trainer or train.train_and_evaluate):
            run_inspection(config.study.inspect, specs, workdir)
    return write_report(config, specs, workdir)


def train_runs(
    specs: list[RunSpec],
    workdir: str,
    retry_diverged: bool,
    trainer: Callable[[ml_collections.ConfigDict, str], Any],
) -> bool:
    """Trains the unfinished runs in order, logging progress with a study-wide ETA (cost taken
    as proportional to depth x steps, calibrated on the runs trained so far). A run that stops
    on a non-finite loss is marked DIVERGED and the study goes on. Returns False if a run
    returned unfinished (SIGTERM: the loop saved a checkpoint and stopped), True otherwise."""
    status = _load_status(workdir)
    todo = [s for s in specs if run_state(s) != 'finished']
    if not retry_diverged:
        for s in todo:
            if run_state(s) == 'diverged':
                logging.warning('study: %s diverged before; skipped (--retry_diverged)', s.name)
        todo = [s for s in todo if run_state(s) != 'diverged']
    logging.info(
        'study: %d of %d runs to train: %s',
        len(todo),
        len(specs),
        ', '.join(s.name for s in todo) or '-',
    )
    cost = lambda s: s.depth * s.config.train.steps  # noqa: E731
    done_cost, done_seconds = 0.0, 0.0
    for i, spec in enumerate(todo):
        remaining = sum(cost(s) for s in todo[i:])
        eta = (
            f', study ETA {format_seconds(remaining * done_seconds / done_cost)}'
            if done_cost
            else ''
        )
        logging.info(
            'study: run %d/%d %s (%s%s)', i + 1, len(todo), spec.name, run_state(spec), eta
        )
        marker = os.path.join(spec.workdir, DIVERGED)
        if os.path.exists(marker):
            os.remove(marker)
        start = time.perf_counter()
        try:
            trainer(spec.config, spec.workdir)
            state = run_state(spec)
        except train.NonFiniteError as e:
            with open(marker, 'w') as f:
                f.write(str(e) + '\n')
            logging.warning('study: %s diverged: %s', spec.name, e)
            state = 'diverged'
        except train.ConfigError as e:
            raise StudyError(f'run {spec.name}: {e}') from None
        seconds = time.perf_counter() - start
        done_cost, done_seconds = done_cost + cost(spec), done_seconds + seconds
        entry = status.setdefault(spec.name, {'seconds': 0.0})
        entry['seconds'] = round(entry['seconds'] + seconds, 1)
        entry['state'] = state
        plots.write_json(os.path.join(workdir, 'status.json'), status)
        logging.info('study: %s %s in %s', spec.name, state, format_seconds(seconds))
        if state != 'finished' and state != 'diverged':
            logging.warning(
                'study: %s stopped at %s (preempted); rerun to resume', spec.name, state
            )
            return False
    return True


def _load_status(workdir: str) -> dict:
    try:
        with open(os.path.join(workdir, 'status.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def inspection_targets(specs: list[RunSpec], max_depth: int = 0) -> dict[str, list[RunSpec]]:
    """Which runs each inspection figure uses: the spectrum and the 2-D landscape take the
    deepest plain and residual nets of the first norm and seed of the grid (depths without a
    plain net are passed over); the lesion takes every residual net of
    that norm and seed. `max_depth` > 0 leaves out deeper nets (`study.inspect.max_depth`)."""
    norm, seed = specs[0].norm if specs else '', min((s.seed for s in specs), default=0)
    pool = [
        s
        for s in specs
        if s.norm == norm and s.seed == seed and (not max_depth or s.depth <= max_depth)
    ]
    if not pool:
        return {}
    plain_depths = {s.depth for s in pool if not s.residual}
    deepest = max(plain_depths) if plain_depths else max(s.depth for s in pool)
    pair = [s for s in pool if s.depth == deepest]
    return {
        'spectrum': pair,
        'landscape2d': pair,
        'lesion': [s for s in pool if s.residual],
    }


def inspect_options(inspect_config: ml_collections.ConfigDict) -> dict:
    """The inspection library's Options fields taken from `study.inspect`."""
    return {k: inspect_config[k] for k in INSPECT_OPTIONS}


def run_inspection(
    inspect_config: ml_collections.ConfigDict, specs: list[RunSpec], workdir: str
) -> dict[str, str]:
    """Draws figures 5-7 with the inspection library (`resjax.inspection.inspect`) on the final
    checkpoints of `inspection_targets`, into `<workdir>/inspect/<figure>/`. A figure whose
    runs, checkpoints and options are those of its last drawing is not redrawn. Returns
    {figure: error message} for figures that could not be drawn (the report shows them)."""
    from resjax import inspection  # Import here: the study's training part does not need it.

    opts = inspection.Options(**inspect_options(inspect_config))
    errors = {}
    for figure, targets in inspection_targets(specs, inspect_config.max_depth).items():
        if figure not in inspect_config.figures:
            continue
        ready = [s for s in targets if run_state(s) == 'finished']
        if not ready:
            errors[figure] = 'no finished run to inspect'
            continue
        out_dir = os.path.join(workdir, 'inspect', figure)
        inputs = {
            'runs': [os.path.relpath(s.workdir, workdir) for s in ready],
            'steps': [s.config.train.steps for s in ready],
            'options': dataclasses.asdict(opts),
        }
        marker = os.path.join(out_dir, 'study_inputs.json')
        if _read_json(marker) == json.loads(json.dumps(inputs)):
            logging.info('study: %s of %s is up to date', figure, [s.name for s in ready])
            continue
        logging.info('study: inspection %s of %s', figure, [s.name for s in ready])
        start = time.perf_counter()
        try:
            inspection.inspect([s.workdir for s in ready], [figure], out_dir, opts)
        except Exception as e:  # noqa: BLE001 (the report says what failed; the study goes on)
            logging.exception('study: inspection %s failed', figure)
            errors[figure] = f'{type(e).__name__}: {e}'.splitlines()[0]
            continue
        plots.write_json(marker, inputs)
        logging.info('study: %s done in %s', figure, format_seconds(time.perf_counter() - start))
    return errors


# ---------------------------------------------------------------------------------------------
# Collecting numbers from the runs.


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
    return [RunData(s, run_state(s), _rows(s.workdir)) for s in specs]


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


def group_mean(runs: list[RunData], group: tuple, key: str) -> tuple[float | None, int]:
    """Mean of run_numbers()[key] over the finished seeds of `group`, and how many."""
    values = [run_numbers(r)[key] for r in runs if r.spec.group == group and r.state == 'finished']
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), len(values)


# ---------------------------------------------------------------------------------------------
# Figures 1-4 (from metrics.jsonl).


def _save(fig, fig_dir: str, name: str, numbers: dict) -> dict:
    """Saves a report figure; returns its path and pixel size (the HTML report's <img>)."""
    width, height = (int(round(x * plots.DPI)) for x in fig.get_size_inches())
    return {
        'path': plots.save_figure(fig, fig_dir, name, numbers),
        'width': width,
        'height': height,
    }


def _norm_title(norm: str) -> str:
    return 'BatchNorm' if norm == 'batch' else 'no normalisation'


def _depth_colors(depths: Iterable[int]) -> dict[int, Any]:
    depths = sorted(set(depths))
    cmap = plt.cm.viridis
    return {d: cmap(0.85 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}


KIND_COLORS = {False: 'tab:red', True: 'tab:blue'}


def figure_errors(runs: list[RunData], fig_dir: str) -> dict | None:
    """Fig. 1 (the paper's Fig. 6): training error (thin, dashed) and test error (bold) vs step,
    plain nets left, residual right, one row per norm, one colour per depth."""
    runs = [r for r in runs if r.rows]
    if not runs:
        return None
    norms = sorted({r.spec.norm for r in runs}, key=lambda n: n != 'batch')
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
            ax.set_title(f'{"ResNet" if residual else "plain"} nets, {_norm_title(norm)}')
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
            ax.set_title(f'depth {depth}, {_norm_title(norm)}', fontsize=10)
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
    norms = sorted({r.spec.norm for r in runs}, key=lambda n: n != 'batch')
    depths = sorted({r.spec.depth for r in runs})
    fig, axes = plt.subplots(2, len(norms), figsize=(6 * len(norms), 7), squeeze=False)
    numbers = {}
    for j, norm in enumerate(norms):
        for r in (r for r in runs if r.spec.norm == norm):
            rows = r.probe_rows()
            step = max(rows)
            layers, values = signals.profile(rows[step], 'act_std')
            layers_values = [(k, v) for k, v in zip(layers, values) if not k.startswith('head')]
            values = [v for _, v in layers_values]
            shade = 0.45 + 0.55 * depths.index(r.spec.depth) / max(1, len(depths) - 1)
            cmap = plt.cm.Blues if r.spec.residual else plt.cm.Reds
            label = f'{r.spec.label.split(" (")[0]} (step {step})'
            axes[0, j].plot(values, color=cmap(shade), marker='.', ms=3, label=label)
            axes[1, j].plot(sorted(values, reverse=True), color=cmap(shade), label=label)
            numbers[r.spec.name] = {'step': step, 'act_std': dict(layers_values)}
        for i, xlabel in enumerate(
            ('layer index (original order)', 'layer index (sorted by magnitude)')
        ):
            ax = axes[i, j]
            ax.set_title(f'response std, {_norm_title(norm)}', fontsize=10)
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
    norms = sorted({r.spec.norm for r in runs}, key=lambda n: n != 'batch')
    depths = sorted({r.spec.depth for r in runs})
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.2), squeeze=False)
    numbers = {}
    for j, norm in enumerate(norms):
        ax = axes[0, j]
        for r in (r for r in runs if r.spec.norm == norm):
            steps, lam = r.series('hessian/lambda_max')
            _, two = r.series('hessian/two_over_lr')
            shade = 0.45 + 0.55 * depths.index(r.spec.depth) / max(1, len(depths) - 1)
            color = (plt.cm.Blues if r.spec.residual else plt.cm.Reds)(shade)
            label = r.spec.label.split(' (')[0] + (f' s{r.spec.seed}' if r.spec.seed else '')
            ax.semilogy(steps, np.maximum(lam, 1e-6), '-', marker='.', color=color, label=label)
            ax.semilogy(steps, two, ':', color=color, lw=1)
            numbers[r.spec.name] = {
                'steps': steps.tolist(),
                'lambda_max': lam.tolist(),
                'two_over_lr': two.tolist(),
            }
        ax.set_title(f'sharpness vs 2/lr (dotted), {_norm_title(norm)}', fontsize=10)
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
    numbers = _read_json(os.path.join(out_dir, figure + '.json'))
    if not os.path.exists(path) or numbers is None:
        return None, None
    height, width = plt.imread(path).shape[:2]
    return {'path': path, 'width': int(width), 'height': int(height)}, numbers


# ---------------------------------------------------------------------------------------------
# Findings: every number computed from the runs, each with its rule and the paper it tests.


def _pct(x: float) -> str:
    return f'{100 * x:.2f}%'


def _x(x: float) -> str:
    return f'{x:.3g}x'


def _finding(fid, figure, text, numbers, paper, verdict) -> dict:
    return {
        'id': fid,
        'figure': figure,
        'text': text,
        'numbers': numbers,
        'paper': paper,
        'verdict': verdict,
    }


def _missing_finding(fid, figure, what, paper) -> dict:
    return _finding(fid, figure, f'Not available yet: {what}.', {}, paper, 'not available')


HE_DEGRADATION = (
    'He et al. 2015 (Sec. 4.1, Fig. 6): the deeper plain net has higher training error '
    'throughout training ("degradation"); the deeper ResNet has lower error.'
)
HE_HEALTHY = (
    'He et al. 2015 (Sec. 4.1): BN plain nets do not suffer from vanishing gradients; '
    "Yang et al. 2019 and Philipp et al. 2018 (and DESIGN.md's measurement): their gradients "
    'explode towards the input, growing with depth; shortcuts keep them near 1x.'
)
HE_RESPONSES = (
    'He et al. 2015 (Sec. 4.2, Fig. 7): ResNets have generally smaller responses than their '
    'plain counterparts, and deeper ResNets smaller ones than shallower ResNets.'
)
EOS = (
    'Edge of stability (Cohen et al. 2021): full-batch GD drives lambda_max up to about 2/lr; '
    'SGD keeps it below. A net whose lambda_max stays far below 2/lr is not limited by the '
    'step size.'
)
LI_SPECTRUM = (
    'Li et al. 2018 (Sec. 6, Fig. 7): without skip connections deep nets reach regions with '
    'large negative Hessian eigenvalues (|lambda_min / lambda_max| large); with them the '
    'landscape is nearly convex around the solution.'
)
LI_LANDSCAPE = (
    'Li et al. 2018 (Fig. 5): the 2-D landscape of plain-56 is chaotic and non-convex, that of '
    'ResNet-56 smooth and convex-looking.'
)
VEIT = (
    'Veit et al. 2016: removing one residual block from a trained ResNet barely changes its '
    'test error (it acts like an ensemble of shallow paths), except at downsampling blocks; '
    'removing a layer of a plain net destroys it.'
)


def compute_findings(
    config: ml_collections.ConfigDict,
    runs: list[RunData],
    inspection: dict[str, dict | None],
) -> list[dict]:
    """The study's findings, each `{'id', 'figure', 'text', 'numbers', 'paper', 'verdict'}`.

    Rules (stated in each text):
    - degradation: reproduced iff the deepest plain net's final training error (mean over
      finished seeds) exceeds the shallowest's by more than `study.degradation_margin`;
      ResNets "fix" it iff the deepest ResNet's does not exceed the shallowest's by that much;
    - gradients at init: first/last conv gradient-norm ratio > 1 = growing towards the input
      (exploding), < 1 = vanishing;
    - responses: ResNet's mean response std below plain's at every depth;
    - sharpness: the last lambda_max below or above 2/lr at that step;
    - spectrum / landscape: the residual net's |lambda_min / lambda_max| (SLQ Ritz values) and
      non-convex fraction of the 2-D slice below the plain net's;
    - lesion: median test-error increase over identity-shortcut blocks below 5 points.
    """
    s = config.study
    margin = s.degradation_margin
    groups = {r.spec.group for r in runs}
    norms = [n for n in s.norms]
    depths = sorted(s.depths)
    out = []

    # --- Fig. 1: degradation -------------------------------------------------------------------
    for norm in norms:
        fid = f'degradation_{norm}'
        lo, hi = depths[0], depths[-1]
        if lo == hi:
            continue
        vals = {}
        for residual in (False, True):
            for d in (lo, hi):
                for key in ('final_train_error', 'final_test_error', 'mean_train_error'):
                    v, n = group_mean(runs, (d, residual, norm), key)
                    vals[f'{"resnet" if residual else "plain"}{d}_{key}'] = v
                    vals[f'{"resnet" if residual else "plain"}{d}_seeds'] = n
        need = [f'plain{lo}', f'plain{hi}']
        if any(vals[f'{k}_final_train_error'] is None for k in need):
            missing = [k for k in need if vals[f'{k}_final_train_error'] is None]
            out.append(
                _missing_finding(
                    fid,
                    1,
                    f'finished runs of {", ".join(missing)} ({_norm_title(norm)})',
                    HE_DEGRADATION,
                )
            )
            continue
        p_lo, p_hi = vals[f'plain{lo}_final_train_error'], vals[f'plain{hi}_final_train_error']
        reproduced = p_hi - p_lo > margin
        text = (
            f'{_norm_title(norm)}: final training error plain-{hi} vs plain-{lo}: '
            f'{_pct(p_hi)} vs {_pct(p_lo)} (test {_pct(vals[f"plain{hi}_final_test_error"])} vs '
            f'{_pct(vals[f"plain{lo}_final_test_error"])}; mean training error over the run '
            f'{_pct(vals[f"plain{hi}_mean_train_error"])} vs '
            f'{_pct(vals[f"plain{lo}_mean_train_error"])}): the degradation problem is '
            f'{"reproduced" if reproduced else "not reproduced"} (rule: reproduced iff the '
            f"deeper plain net's final training error exceeds the shallower's by more than "
            f'{_pct(margin)}).'
        )
        verdict = 'reproduced' if reproduced else 'not reproduced'
        r_lo, r_hi = vals[f'resnet{lo}_final_train_error'], vals[f'resnet{hi}_final_train_error']
        if r_lo is not None and r_hi is not None:
            fixed = r_hi - r_lo <= margin
            text += (
                f' ResNet-{hi} vs ResNet-{lo}: {_pct(r_hi)} vs {_pct(r_lo)} (test '
                f'{_pct(vals[f"resnet{hi}_final_test_error"])} vs '
                f'{_pct(vals[f"resnet{lo}_final_test_error"])}): the deeper ResNet '
                f'{"is no worse" if fixed else "is worse"} (same margin).'
            )
            vals['resnet_deeper_no_worse'] = fixed
        vals['reproduced'] = reproduced
        vals['margin'] = margin
        out.append(_finding(fid, 1, text, vals, HE_DEGRADATION, verdict))

    # --- Fig. 2: gradient profiles at init --------------------------------------------------
    for norm in norms:
        fid = f'init_gradients_{norm}'
        parts, nums = [], {}
        for d in depths:
            for residual in (False, True):
                if (d, residual, norm) not in groups:
                    continue
                g, n = group_mean(runs, (d, residual, norm), 'init_grad_ratio')
                a, _ = group_mean(runs, (d, residual, norm), 'init_act_grad_ratio')
                name = f'{"ResNet" if residual else "plain"}-{d}'
                nums[f'{"resnet" if residual else "plain"}{d}_init_grad_ratio'] = g
                nums[f'{"resnet" if residual else "plain"}{d}_init_act_grad_ratio'] = a
                if g is not None:
                    parts.append(f'{name} {_x(g)} (activation gradients {_x(a)})')
        if not parts:
            out.append(
                _missing_finding(
                    fid, 2, f'step-0 probes of finished runs ({_norm_title(norm)})', HE_HEALTHY
                )
            )
            continue
        have = [d for d in depths if nums.get(f'plain{d}_init_grad_ratio') is not None]
        verdict, tail = 'not available', ''
        if have:
            hi, lo = have[-1], have[0]
            p, r = nums[f'plain{hi}_init_grad_ratio'], nums.get(f'resnet{hi}_init_grad_ratio')
            verdict = 'exploding' if p > 1 else 'vanishing'
            direction = 'grow towards the input' if p > 1 else 'shrink towards the input'
            tail = f' In plain-{hi} the gradients {direction} ({verdict}; rule: first/last > 1 '
            tail += 'is growing towards the input)'
            if r is not None:
                tail += f'; in ResNet-{hi} the ratio is {_x(r)}'
            if lo != hi:
                growth = p / nums[f'plain{lo}_init_grad_ratio']
                nums['plain_ratio_growth'] = growth
                tail += f'; from plain-{lo} to plain-{hi} the ratio changes {_x(growth)}'
            tail += '.'
        text = (
            f"{_norm_title(norm)}: at init, the first conv layer's weight-gradient norm over the "
            f"last conv layer's (signals.first_last_ratio of the step-0 probe): "
            + '; '.join(parts)
            + '.'
            + tail
        )
        out.append(_finding(fid, 2, text, nums, HE_HEALTHY, verdict))

    # --- Fig. 3: response std ----------------------------------------------------------------
    for norm in norms:
        fid = f'responses_{norm}'
        nums, parts, smaller = {}, [], []
        for d in depths:
            p, _ = group_mean(runs, (d, False, norm), 'final_response_std')
            r, _ = group_mean(runs, (d, True, norm), 'final_response_std')
            nums[f'plain{d}_response_std'], nums[f'resnet{d}_response_std'] = p, r
            if p is not None and r is not None:
                parts.append(f'plain-{d} {p:.4g} vs ResNet-{d} {r:.4g}')
                smaller.append(r < p)
        if not parts:
            out.append(
                _missing_finding(
                    fid,
                    3,
                    f'probe rows of finished plain/ResNet pairs ({_norm_title(norm)})',
                    HE_RESPONSES,
                )
            )
            continue
        res = [nums[f'resnet{d}_response_std'] for d in depths]
        deeper_smaller = None
        if all(v is not None for v in res) and len(res) > 1:
            deeper_smaller = res[-1] < res[0]
        verdict = 'confirmed' if all(smaller) else 'contradicted'
        text = (
            f'{_norm_title(norm)}: mean response std over the 3x3 layers at the last probe: '
            + '; '.join(parts)
            + f'. ResNet responses are smaller at {sum(smaller)} of {len(smaller)} depths'
            + (
                f"; the deepest ResNet's are {'smaller' if deeper_smaller else 'not smaller'} "
                "than the shallowest's"
                if deeper_smaller is not None
                else ''
            )
            + ' (rule: confirmed iff smaller at every depth).'
        )
        nums['resnet_smaller_at_every_depth'] = all(smaller)
        nums['deeper_resnet_smaller'] = deeper_smaller
        out.append(_finding(fid, 3, text, nums, HE_RESPONSES, verdict))

    # --- Fig. 4: sharpness vs 2/lr -----------------------------------------------------------
    parts, nums, above, ever = [], {}, [], []
    for r in runs:
        if r.state != 'finished' or r.spec.seed != min(x.spec.seed for x in runs):
            continue
        n = run_numbers(r)
        if n['final_lambda_max'] is None:
            continue
        nums[r.spec.name] = {
            k: n[k]
            for k in (
                'final_lambda_max',
                'final_two_over_lr',
                'final_hessian_step',
                'max_sharpness_ratio',
            )
        }
        above.append(n['final_lambda_max'] > n['final_two_over_lr'])
        ever.append(n['max_sharpness_ratio'] > 1)
        parts.append(
            f'{r.spec.label} {n["final_lambda_max"]:.3g} vs 2/lr {n["final_two_over_lr"]:.3g} '
            f'at step {n["final_hessian_step"]} (max over training {n["max_sharpness_ratio"]:.2f} '
            'of 2/lr)'
        )
    if parts:
        text = (
            'lambda_max at the last sharpness probe vs 2/lr: ' + '; '.join(parts) + f'. '
            f'{sum(above)} of {len(above)} nets end above 2/lr, {sum(ever)} exceed it at some '
            'probe (rule: above iff lambda_max > 2/lr).'
        )
        verdict = 'above 2/lr' if any(above) else 'below 2/lr'
        out.append(_finding('sharpness', 4, text, nums, EOS, verdict))
    else:
        out.append(_missing_finding('sharpness', 4, 'sharpness probes of finished runs', EOS))

    # --- Figs. 5-7: inspection -------------------------------------------------------------
    spectrum = inspection.get('spectrum')
    if spectrum:
        nums, parts = {}, []
        for label, v in spectrum.items():
            ratio = abs(min(v['ritz_min'], 0.0)) / v['ritz_max']
            nums[label] = {
                'ritz_min': v['ritz_min'],
                'ritz_max': v['ritz_max'],
                'neg_ratio': ratio,
                'step': v['step'],
            }
            parts.append(
                f'{label}: lambda_max {v["ritz_max"]:.3g}, lambda_min {v["ritz_min"]:.3g}, '
                f'|lambda_min / lambda_max| {ratio:.3g}'
            )
        verdict = _pair_verdict(nums, 'neg_ratio')
        tops = {k[:5]: v['ritz_max'] for k, v in nums.items() if k[:5] in ('plain', 'ResNe')}
        if len(tops) == 2:
            nums['plain_over_resnet_lambda_max'] = tops['plain'] / tops['ResNe']
            parts.append(
                f"the plain net's lambda_max is {_x(tops['plain'] / tops['ResNe'])} the ResNet's"
            )
        text = (
            'Hessian spectrum at the end of training (SLQ Ritz values, BN '
            f'{s.inspect.bn_mode} mode, {s.inspect.examples} examples): '
            + '; '.join(parts)
            + f". {_cap(verdict)} with Li et al. (rule: consistent iff the residual net's "
            '|lambda_min / lambda_max| '
            "is below the plain net's)."
        )
        out.append(_finding('spectrum', 5, text, nums, LI_SPECTRUM, verdict))
    else:
        out.append(
            _missing_finding(
                'spectrum', 5, 'the spectrum of the deepest finished nets', LI_SPECTRUM
            )
        )

    land = inspection.get('landscape2d')
    if land:
        nums, parts = {}, []
        for label, v in land['runs'].items():
            c = v['convexity']
            nums[label] = {
                'nonconvex_fraction': c['nonconvex_fraction'],
                'mean_abs_ratio': c['mean_abs_ratio'],
                'loss_at_0': v['loss_at_0'],
                'loss_max': v['loss_max'],
                'step': v['step'],
            }
            parts.append(
                f'{label}: loss {v["loss_at_0"]:.3g} at the centre, {v["loss_max"]:.3g} at most; '
                f'{100 * c["nonconvex_fraction"]:.0f}% of the grid non-convex, mean '
                f'|h_min / h_max| {c["mean_abs_ratio"]:.3g}'
            )
        verdict = _pair_verdict(nums, 'nonconvex_fraction')
        text = (
            f'2-D loss landscape ({s.inspect.grid}x{s.inspect.grid} grid over '
            f'[-{s.inspect.range:g}, {s.inspect.range:g}]^2, filter-normalised random '
            f'directions): ' + '; '.join(parts) + f'. {_cap(verdict)} with Li et al. (rule: '
            "consistent iff the residual net's non-convex fraction is below the plain net's)."
        )
        out.append(_finding('landscape', 6, text, nums, LI_LANDSCAPE, verdict))
    else:
        out.append(
            _missing_finding(
                'landscape', 6, 'the landscape of the deepest finished nets', LI_LANDSCAPE
            )
        )

    lesion = inspection.get('lesion')
    if lesion:
        nums, parts, medians = {}, [], []
        for label, v in lesion.items():
            if not v['blocks']:
                continue
            base = v['test_error_intact']
            ident = [b['test_error'] - base for b in v['blocks'] if b['shortcut'] == 'identity']
            down = [b['test_error'] - base for b in v['blocks'] if b['shortcut'] != 'identity']
            med = float(np.median(ident)) if ident else None
            nums[label] = {
                'intact': base,
                'median_increase_identity': med,
                'max_increase_identity': max(ident) if ident else None,
                'max_increase_downsampling': max(down) if down else None,
                'step': v['step'],
            }
            if med is not None:
                medians.append(med)
            parts.append(
                f'{label}: intact {_pct(base)}; removing one identity block adds '
                f'{_pct(med) if med is not None else "-"} (median), '
                f'{_pct(max(ident)) if ident else "-"} (worst); a downsampling block adds up to '
                f'{_pct(max(down)) if down else "-"}'
            )
        verdict = 'confirmed' if medians and all(m < 0.05 for m in medians) else 'contradicted'
        text = (
            'Lesions (test error, BN eval mode): ' + '; '.join(parts) + f'. {_cap(verdict)} '
            '(rule: confirmed iff the median increase over identity blocks is below 5 points '
            'for every ResNet).'
        )
        out.append(_finding('lesion', 7, text, nums, VEIT, verdict))
    else:
        out.append(_missing_finding('lesion', 7, 'the lesion study of finished ResNets', VEIT))
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pair_verdict(nums: dict, key: str) -> str:
    plain = [v[key] for k, v in nums.items() if k.startswith('plain')]
    res = [v[key] for k, v in nums.items() if k.startswith('ResNet')]
    if not plain or not res:
        return 'one net only'
    return 'consistent' if res[0] < plain[0] else 'not consistent'


# ---------------------------------------------------------------------------------------------
# Report.

SECTIONS = {
    1: ('Training and test error (He et al. 2015, Fig. 6)', 'fig1_error'),
    2: ('Gradient profiles at init and during training', 'fig2_gradients'),
    3: ('Layer responses (He et al. 2015, Fig. 7)', 'fig3_responses'),
    4: ('Sharpness against 2/lr', 'fig4_sharpness'),
    5: ('Hessian spectral density at the end of training', 'spectrum'),
    6: ('2-D loss landscapes of the deepest nets (Li et al. 2018, Fig. 5)', 'landscape2d'),
    7: ('Lesions of the residual nets (Veit et al. 2016)', 'lesion'),
}


def write_report(config: ml_collections.ConfigDict, specs: list[RunSpec], workdir: str) -> dict:
    """Draws figures 1-4 from the runs' metrics, picks up figures 5-7 from earlier inspection,
    computes the findings and writes `findings.json`, `report.md` and `report.html`.

    Returns the findings.json content: `runs` (state and `run_numbers` of each run),
    `findings`, `figures` ({number: {'path', 'width', 'height'}}), `missing` (lines).
    """
    runs = collect(specs)
    fig_dir = os.path.join(workdir, 'figures')
    figures: dict[int, dict | None] = {
        1: figure_errors(runs, fig_dir),
        2: figure_gradients(runs, fig_dir),
        3: figure_responses(runs, fig_dir),
        4: figure_sharpness(runs, fig_dir),
    }
    inspection, targets = {}, inspection_targets(specs, config.study.inspect.max_depth)
    stale = []
    for number, name in ((5, 'spectrum'), (6, 'landscape2d'), (7, 'lesion')):
        figures[number], inspection[name] = inspection_figure(workdir, name)
        marker = _read_json(os.path.join(workdir, 'inspect', name, 'study_inputs.json'), {})
        want = [
            s.name
            for s in targets.get(name, [])
            if run_state(s) == 'finished'
            and os.path.relpath(s.workdir, workdir) not in marker.get('runs', [])
        ]
        if figures[number] and want:
            stale.append(f'figure {number} ({name}) does not include {", ".join(want)} yet')
    findings = compute_findings(config, runs, inspection)
    missing = [
        f'{r.spec.name}: {r.state}'
        + (
            f' (step {max(x["step"] for x in r.rows)} of {r.spec.config.train.steps})'
            if r.rows
            else ''
        )
        + (
            f': {_read_text(os.path.join(r.spec.workdir, DIVERGED))}'
            if r.state == 'diverged'
            else ''
        )
        for r in runs
        if r.state != 'finished'
    ]
    missing += [
        f'figure {n} ({SECTIONS[n][0]}): not drawn yet' for n, f in figures.items() if f is None
    ]
    missing += stale
    status = _load_status(workdir)
    result = {
        'runs': {
            r.spec.name: {
                'state': r.state,
                'seconds': status.get(r.spec.name, {}).get('seconds'),
                **run_numbers(r),
            }
            for r in runs
        },
        'findings': findings,
        'figures': {str(n): f for n, f in figures.items() if f},
        'missing': missing,
    }
    plots.write_json(os.path.join(workdir, 'findings.json'), result)
    blocks = _report_blocks(config, runs, figures, findings, missing, workdir)
    with open(os.path.join(workdir, 'report.md'), 'w') as f:
        f.write(render_markdown(blocks, workdir))
    with open(os.path.join(workdir, 'report.html'), 'w') as f:
        f.write(render_html(blocks))
    logging.info('study: wrote %s and report.html', os.path.join(workdir, 'report.md'))
    return result


def _report_blocks(config, runs, figures, findings, missing, workdir) -> list[tuple]:
    s = config.study
    t = config.train
    status = _load_status(workdir)
    blocks: list[tuple] = [('h1', 'Plain vs residual networks: the study')]
    extra = ''.join(f', excluding {e}' for e in s.exclude)
    recipe = (
        f'{t.steps} steps of batch {t.batch_size}, SGD momentum {t.momentum}, lr {t.lr} '
        f'({t.schedule}, {t.warmup_steps} steps of {t.warmup} warm-up), weight decay '
        f'{t.weight_decay}'
    )
    intro = (
        f'Dataset {config.dataset.name}; grid: depths {list(s.depths)}{extra}, residual '
        f'{list(s.residual)}, norm {list(s.norms)}, seeds {list(s.seeds)}. Every run: {recipe}'
        + ''.join(f'; override "{o}"' for o in s.overrides)
        + f'. Signal probes every {config.probes.every_steps} steps, sharpness every '
        f'{config.probes.hessian_every_steps} ({config.probes.hessian_batch} batch, BN '
        f"{config.probes.bn_mode} mode). Every number below is computed from the runs' "
        'metrics.jsonl and the inspection outputs (findings.json holds them all).'
    )
    blocks.append(('p', intro))
    header = ['run', 'state', 'steps', 'final train error', 'final test error', 'wall time']
    table = []
    for r in runs:
        n = run_numbers(r)
        last = max((x['step'] for x in r.rows), default=0)
        seconds = status.get(r.spec.name, {}).get('seconds')
        table.append(
            [
                r.spec.name,
                r.state,
                f'{last}/{r.spec.config.train.steps}',
                _pct(n['final_train_error']) if n['final_train_error'] is not None else '-',
                _pct(n['final_test_error']) if n['final_test_error'] is not None else '-',
                format_seconds(seconds) if seconds else '-',
            ]
        )
    blocks.append(('table', header, table))
    if missing:
        blocks.append(('h2', 'Missing'))
        blocks.append(('p', 'This study is not complete; what follows shows what exists.'))
        blocks.append(('ul', missing))
    blocks.append(('h2', 'Findings'))
    blocks.append(
        (
            'ul',
            [f'Fig. {f["figure"]}, {f["id"]}: **{f["verdict"]}**' for f in findings],
        )
    )
    for number, (title, _) in SECTIONS.items():
        blocks.append(('h3', f'Figure {number}: {title}'))
        fig = figures.get(number)
        if fig:
            blocks.append(('img', fig['path'], f'Figure {number}: {title}'))
        else:
            blocks.append(('p', '*Not drawn yet: its runs or inspection are missing.*'))
        for f in findings:
            if f['figure'] == number:
                blocks.append(('p', f'**{_cap(f["verdict"])}.** {f["text"]}'))
                blocks.append(('p', f'*Paper:* {f["paper"]}'))
    return blocks


def render_markdown(blocks: list[tuple], workdir: str) -> str:
    """Markdown for the report blocks; images by path relative to the workdir."""
    lines = []
    for kind, *args in blocks:
        if kind == 'h1':
            lines += [f'# {args[0]}', '']
        elif kind == 'h2':
            lines += [f'## {args[0]}', '']
        elif kind == 'h3':
            lines += [f'### {args[0]}', '']
        elif kind == 'p':
            lines += [args[0], '']
        elif kind == 'ul':
            lines += [f'- {item}' for item in args[0]] + ['']
        elif kind == 'img':
            lines += [f'![{args[1]}]({os.path.relpath(args[0], workdir)})', '']
        elif kind == 'table':
            header, rows = args
            lines.append('| ' + ' | '.join(header) + ' |')
            lines.append('|' + ' --- |' * len(header))
            lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows] + ['']
    return '\n'.join(lines)


def _inline_html(text: str) -> str:
    # The report's own markup only: **bold** and *italic*.
    out = html.escape(text)
    parts = out.split('**')
    out = ''.join(f'<b>{p}</b>' if i % 2 else p for i, p in enumerate(parts))
    parts = out.split('*')
    return ''.join(f'<i>{p}</i>' if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[tuple]) -> str:
    """A self-contained HTML page for the report blocks: figures as base64 PNG data URIs."""
    body = []
    for kind, *args in blocks:
        if kind in ('h1', 'h2', 'h3'):
            body.append(f'<{kind}>{html.escape(args[0])}</{kind}>')
        elif kind == 'p':
            body.append(f'<p>{_inline_html(args[0])}</p>')
        elif kind == 'ul':
            body.append('<ul>' + ''.join(f'<li>{_inline_html(i)}</li>' for i in args[0]) + '</ul>')
        elif kind == 'img':
            with open(args[0], 'rb') as f:
                data = base64.b64encode(f.read()).decode('ascii')
            body.append(
                f'<figure><img alt="{html.escape(args[1])}" src="data:image/png;base64,'
                f'{data}"><figcaption>{html.escape(args[1])}</figcaption></figure>'
            )
        elif kind == 'table':
            header, rows = args
            body.append(
                '<table><tr>'
                + ''.join(f'<th>{html.escape(h)}</th>' for h in header)
                + '</tr>'
                + ''.join(
                    '<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>'
                    for row in rows
                )
                + '</table>'
            )
    style = (
        'body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}'
        'img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;'
        'padding:2px 8px}figcaption{font-size:90%;color:#555}'
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>resjax study</title>'
        f'<style>{style}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n'
    )


# ---------------------------------------------------------------------------------------------
# Small helpers.


def _read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ''
