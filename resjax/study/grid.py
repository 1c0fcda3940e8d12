"""The grid of runs: each run's config and workdir, its state, and the study workdir's status
and inspection targets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any

import ml_collections

from resjax import models, study_config, train
from resjax.metrics import read_metrics
from resjax.study.config import (
    Override,
    StudyError,
    parse_constructed,
    parse_override,
    parse_selector,
    parse_variant,
    validate_study_config,
)

DIVERGED = 'DIVERGED'
# In `<workdir>/inspect/<figure>/`: the inputs of its last drawing, and why the last attempt
# to draw it failed (removed once it is drawn).
INPUTS_FILE = 'study_inputs.json'
ERROR_FILE = 'study_error.txt'


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
    source: str | None = None  # A constructed run: the grid run it starts from.
    lr: float | None = None  # A `study.constructed_lrs` run: its constant learning rate.
    data_seed: int | None = None  # An LMC partner (`study.lmc`): its grid run's data_seed.
    variant: str | None = None  # A `study.variants` run: its entry's tag.

    @property
    def label(self) -> str:
        """Its model family's label, e.g. 'plain-56', 'ResNet-20 (no BN)' (the inspection
        library labels its figures' runs the same way); a constructed run's says so, a sweep
        run's names its lr ('plain-20 restarted at lr 0.01') and an LMC partner's its data order."""
        label = models.run_label(self.config.model)
        if self.lr is not None:
            how = 'restarted' if self.source_depth == self.depth else f'built from {self.source}'
            return f'{label} {how} at lr {self.lr:g}'
        if self.data_seed is not None:
            return f'{label}, data order {self.data_seed}'
        return f'{label} built from {self.source}' if self.source else label

    @property
    def source_depth(self) -> int:
        """The depth of the run it starts from (0 for a grid run), read off its name."""
        return int(self.name.split('from')[1].split('_')[0]) if self.source else 0

    @property
    def group(self) -> tuple[int, bool, str] | None:
        """The grid point without the seed: runs of one group are averaged in findings (None
        for a constructed run, an LMC partner or a variant: none is a grid point)."""
        if self.source or self.data_seed is not None or self.variant is not None:
            return None
        return (self.depth, self.residual, self.norm)


def run_name(
    depth: int,
    residual: bool,
    norm: str,
    seed: int,
    source_depth: int = 0,
    lr: float | None = None,
    variant: str | None = None,
) -> str:
    """`plain56_bn_s0`, `resnet20_nobn_s1`, `plain56from20_bn_s0` (constructed from plain-20),
    `plain20from20_lr0.01_bn_s0` (a `study.constructed_lrs` run at lr 0.01),
    `plain56_bn_diracparam_s0` (the `study.variants` entry tagged diracparam): the run's
    directory under `<workdir>/runs/`."""
    kind = 'resnet' if residual else 'plain'
    built = f'from{source_depth}' if source_depth else ''
    at = f'_lr{lr:g}' if lr is not None else ''
    tag = f'_{variant}' if variant else ''
    return f'{kind}{depth}{built}{at}_{"bn" if norm == "batch" else "nobn"}{tag}_s{seed}'


def expand_grid(config: ml_collections.ConfigDict, workdir: str) -> list[RunSpec]:
    """Every run of the study (the grid's product less `study.exclude`) in training order:
    BN nets first (the paper's setting), then by depth, plain before residual, then seed; then
    the `study.variants` runs, then the constructed (or sweep) runs and the LMC partners. Each
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
    if not points:  # As for an empty study.seeds: nothing to run is bad input, not a report.
        raise StudyError(f'study.exclude={tuple(s.exclude)!r} leaves no run of the grid')
    order = {'batch': 0, 'none': 1}
    specs = []
    for depth, residual, norm, seed in sorted(
        points, key=lambda p: (order[p[2]], p[0], p[1], p[3])
    ):
        c = run_config(base, overrides, depth, residual, norm, seed)
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
    # The controlled sweep replaces the single constructed runs.
    built = (_sweep_specs if s.constructed_lrs else _constructed_specs)(
        s, base, overrides, specs, workdir
    )
    return specs + _variant_specs(s, config, specs, workdir) + built + _lmc_specs(s, specs, workdir)


def run_config(
    base: dict, overrides: list[Override], depth: int, residual: bool, norm: str, seed: int
) -> ml_collections.ConfigDict:
    """The training config of one grid point: the base with the grid values and every
    matching override applied."""
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
    return c


def _constructed_specs(
    s: ml_collections.ConfigDict,
    base: dict,
    overrides: list[Override],
    grid: list[RunSpec],
    workdir: str,
) -> list[RunSpec]:
    """The `study.constructed` runs, after the grid: for each entry and each (norm, seed) of
    the grid, the deeper plain net built from the grid's plain run of the shallow depth, with
    the recipe (overrides included) of a plain net of the deeper depth. Raises StudyError if
    `study.exclude` leaves out such a source run."""
    out = []
    by_name = {g.name: g for g in grid}
    for text in s.constructed:
        shallow, deep = parse_constructed(text)
        for norm, seed in sorted(
            {(g.norm, g.seed) for g in grid}, key=lambda p: (p[0] != 'batch', p[1])
        ):
            source = by_name.get(run_name(shallow, False, norm, seed))
            if source is None:  # An entry dropped silently would be a study without its answer.
                raise StudyError(
                    f'study.constructed entry {text!r} starts from '
                    f'{run_name(shallow, False, norm, seed)}, which study.exclude leaves out; '
                    'drop the entry or that exclusion'
                )
            c = run_config(base, overrides, deep, False, source.norm, source.seed)
            name = run_name(deep, False, source.norm, source.seed, shallow)
            try:
                train.validate_config(c)  # Before init_from: the source may not exist yet.
            except train.ConfigError as e:
                raise StudyError(f'run {name}: {e}') from None
            c.train.init_from = source.workdir
            out.append(
                RunSpec(
                    name,
                    deep,
                    False,
                    source.norm,
                    source.seed,
                    c.lock(),
                    os.path.join(workdir, 'runs', name),
                    source=source.name,
                )
            )
    return out


def run_state(spec: RunSpec) -> str:
    """'finished' (a row at train.steps with eval metrics), 'diverged' (a DIVERGED mark),
    'partial' (some metrics) or 'missing'."""
    if os.path.exists(os.path.join(spec.workdir, DIVERGED)):
        return 'diverged'
    rows = read_rows(spec.workdir)
    if any(r['step'] == spec.config.train.steps and 'eval/accuracy' in r for r in rows):
        return 'finished'
    return 'partial' if rows else 'missing'


def read_rows(workdir: str) -> list[dict]:
    """A workdir's metrics rows, read as training reads them (a last line torn by a kill is
    skipped: the resumed run drops it); none if it has no readable metrics.jsonl."""
    try:
        return read_metrics(workdir, allow_torn_end=True)
    except (OSError, ValueError):
        return []


def load_status(workdir: str) -> dict:
    """`status.json`: {run name: {'state', 'seconds'}} of the runs this study trained."""
    try:
        with open(os.path.join(workdir, 'status.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def inspection_targets(specs: list[RunSpec], max_depth: int = 0) -> dict[str, list[RunSpec]]:
    """Which runs each inspection figure uses: the spectrum and the 2-D landscape take the
    deepest plain and residual nets of the first norm and seed of the grid (depths without a
    plain net are passed over); the lesion takes every residual net of that norm and seed and
    the deepest plain net; the block probes take the spectrum's pair and the constructed runs of
    that depth (not the `study.constructed_lrs` sweep's); the barriers take `barrier_targets`
    (every seed). `max_depth` > 0 leaves out deeper nets (`study.inspect.max_depth`)."""
    norm, seed = specs[0].norm if specs else '', min((s.seed for s in specs), default=0)
    pool = [
        s
        for s in specs
        if s.norm == norm and s.seed == seed and (not max_depth or s.depth <= max_depth)
    ]
    built = [s for s in pool if s.source and s.lr is None]  # Not the sweep's short runs.
    pool = [s for s in pool if s.group is not None]
    if not pool:
        return {}
    deepest = _deepest(pool)
    pair = [s for s in pool if s.depth == deepest]
    return {
        'spectrum': pair,
        'landscape2d': pair,
        # The deepest plain net too: its blocks replaced by the identity are the contrast.
        'lesion': [s for s in pool if s.residual] + [s for s in pair if not s.residual],
        'blocks': pair + [s for s in built if s.depth == deepest],
        'barriers': barrier_targets(specs, max_depth),
    }


def inspection_inputs(
    inspect_config: ml_collections.ConfigDict, ready: list[RunSpec], workdir: str
) -> dict:
    """What an inspection figure drawn from the finished runs `ready` depends on: their
    workdirs (relative to the study's), their `train.steps` and the inspection options."""
    return {
        'runs': [os.path.relpath(s.workdir, workdir) for s in ready],
        'steps': [s.config.train.steps for s in ready],
        'options': study_config.inspection_settings(inspect_config),
    }


def read_json(path: str, default: Any = None) -> Any:
    """The JSON at `path`, or `default` if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_text(path: str) -> str:
    """The stripped text at `path`, or '' if it is missing."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ''


def norm_title(norm: str) -> str:
    """A grid norm as a title: 'BatchNorm' or 'no normalisation'."""
    return 'BatchNorm' if norm == 'batch' else 'no normalisation'


def _leaves(tree: dict, prefix: str = '') -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def _flag_value(value: Any) -> str:
    # As ml_collections' config flags parse them: tuples and None as Python literals.
    return value if isinstance(value, str) else repr(value)


def train_command(
    spec: RunSpec, config_file: str, file_config: ml_collections.ConfigDict, script: str
) -> list[str]:
    """The argv of `python <script> --config <config_file> --workdir <run workdir>
    --config.<key>=<value> ...` that trains `spec` alone: every training key where the run's
    config differs from `file_config` (what `config_file` gives before any override: the grid
    values, the study's overrides and the command line's), so a job array or a pod launcher
    can run the grid. The study then finds the run as if it had trained it."""
    base = _leaves({k: v for k, v in file_config.to_dict().items() if k != 'study'})
    argv = ['python', script, '--config', config_file, '--workdir', spec.workdir]
    for key, value in _leaves(spec.config.to_dict()).items():
        if key not in base or base[key] != value or type(base[key]) is not type(value):
            argv.append(f'--config.{key}={_flag_value(value)}')
    return argv


# ---------------------------------------------------------------------------------------------
# The constructed solution as a controlled sweep (`study.constructed_lrs`).

# The nets of the sweep, for each entry 'a->b': (its depth, residual, its source's depth and
# residual), as 'a' and 'b' resolve them. In the order they train after their sources.
SWEEP_NETS = (
    ('built_plain', 'b', False, 'a'),  # plain-b built from plain-a (He et al.'s construction)
    ('built_resnet', 'b', True, 'a'),  # ResNet-b built from ResNet-a
    ('restart_plain', 'a', False, 'a'),  # plain-a restarted from itself
    ('restart_resnet', 'a', True, 'a'),  # ResNet-a restarted from itself
    ('restart_random', 'b', False, 'b'),  # plain-b of random init restarted from itself
)


def sweep_run_name(role: str, shallow: int, deep: int, norm: str, seed: int, lr: float) -> str:
    """The run name of net `role` (`SWEEP_NETS`) of entry `shallow->deep` at `lr`, e.g.
    `plain56from20_lr0.01_bn_s0` (built_plain), `plain56from56_lr0.01_bn_s0` (restart_random)."""
    _, depth, residual, source = next(n for n in SWEEP_NETS if n[0] == role)
    pick = {'a': shallow, 'b': deep}
    return run_name(pick[depth], residual, norm, seed, pick[source], lr)


def _sweep_specs(
    s: ml_collections.ConfigDict,
    base: dict,
    overrides: list[Override],
    grid: list[RunSpec],
    workdir: str,
) -> list[RunSpec]:
    """The `study.constructed_lrs` runs, after the grid: for each entry 'a->b', (norm, seed) of
    the grid and lr, the `SWEEP_NETS`, each starting (`train.init_from`) from its grid source's
    final checkpoint and trained for `study.constructed_steps` steps at that constant lr, no
    warm-up, a fresh optimizer; otherwise the recipe (overrides included) of its own grid
    point, with the signal and angle probes off and the sharpness probe on at step 0 (every
    `probes.hessian_every_steps`, or once if that is 0). A run that two entries share is listed
    once. Only the (norm, seed) points whose grid runs hold all five sources are swept; raises
    StudyError if no point does (`study.exclude`, `study.depths`)."""
    out: dict[str, RunSpec] = {}
    by_name = {g.name: g for g in grid}
    points = sorted({(g.norm, g.seed) for g in grid}, key=lambda p: (p[0] != 'batch', p[1]))
    for text in s.constructed:
        shallow, deep = parse_constructed(text)
        pick = {'a': shallow, 'b': deep}
        sources = {  # Every source of each (norm, seed) point.
            p: [run_name(pick[src], residual, *p) for _, _, residual, src in SWEEP_NETS]
            for p in points
        }
        # The points whose grid runs hold every source: a point the grid trains only in part
        # (e.g. a second seed of the deep nets alone) is not swept, so no sweep lacks a control.
        swept = [p for p in points if all(n in by_name for n in sources[p])]
        if not swept:
            missing = next(n for n in sources[points[0]] if n not in by_name)
            raise StudyError(
                f'study.constructed_lrs: entry {text!r} starts from {missing}, which the grid '
                'leaves out (study.exclude or study.depths); add it to the grid or drop '
                'study.constructed_lrs'
            )
        for (norm, seed), lr in itertools.product(swept, s.constructed_lrs):
            for _, depth, residual, source_depth in SWEEP_NETS:
                depth, source_depth = pick[depth], pick[source_depth]
                source = by_name[run_name(source_depth, residual, norm, seed)]
                name = run_name(depth, residual, norm, seed, source_depth, lr)
                if name in out:
                    continue
                c = run_config(base, overrides, depth, residual, norm, seed)
                t, p = c.train, c.probes
                t.lr, t.schedule, t.warmup_steps = float(lr), 'constant', 0
                t.steps = s.constructed_steps
                p.every_steps = p.init_angle_every_steps = 0
                p.hessian_every_steps = p.hessian_every_steps or s.constructed_steps
                try:
                    train.validate_config(c)  # Before init_from: the source may not exist yet.
                except train.ConfigError as e:
                    raise StudyError(f'run {name}: {e}') from None
                c.train.init_from = source.workdir
                out[name] = RunSpec(
                    name, depth, residual, norm, seed, c.lock(),
                    os.path.join(workdir, 'runs', name), source=source.name, lr=float(lr),
                )  # fmt: skip
    return list(out.values())


# Linear mode connectivity (`study.lmc`): a partner for each of the deepest plain and residual
# grid runs, same init, another data order; and the barrier figure's runs.

LMC_DATA_SEED_OFFSET = 1000  # A partner's data_seed = its run's seed + this (no grid seed's).


def _deepest(pool: list[RunSpec]) -> int:
    """The deepest depth with a plain net in `pool` (of them all if none is plain)."""
    plain_depths = {s.depth for s in pool if not s.residual}
    return max(plain_depths) if plain_depths else max(s.depth for s in pool)


def _barrier_grid_runs(grid: list[RunSpec], max_depth: int = 0) -> list[RunSpec]:
    """The grid runs of the first norm at the deepest depth with a plain net (up to
    `max_depth` if > 0), every seed: the runs whose barriers figure 14 measures."""
    norm = grid[0].norm if grid else ''
    pool = [
        g
        for g in grid
        if g.group is not None and g.norm == norm and (not max_depth or g.depth <= max_depth)
    ]
    if not pool:
        return []
    deepest = _deepest(pool)
    return [g for g in pool if g.depth == deepest]


def barrier_targets(specs: list[RunSpec], max_depth: int = 0) -> list[RunSpec]:
    """The barrier figure's runs: `_barrier_grid_runs`, then their LMC partners (if any)."""
    runs = _barrier_grid_runs(specs, max_depth)
    keys = {(g.depth, g.residual, g.norm, g.seed) for g in runs}
    partners = [
        s
        for s in specs
        if s.data_seed is not None and (s.depth, s.residual, s.norm, s.seed) in keys
    ]
    return runs + partners


def _lmc_specs(s: ml_collections.ConfigDict, grid: list[RunSpec], workdir: str) -> list[RunSpec]:
    """With `study.lmc`, after every other run: for each run of `_barrier_grid_runs` of the
    first seed (a partner costs a full run; the init -> final barriers have every seed), a
    partner `<name>_d<data_seed>` with the run's config (same seed, hence the same init) but
    `data_seed` = seed + LMC_DATA_SEED_OFFSET (another data order and augmentation) and its
    probes off (they read the model, never change it; the partner is only interpolated)."""
    if not s.lmc:
        return []
    out = []
    runs = _barrier_grid_runs(grid, s.inspect.max_depth)
    for g in [g for g in runs if g.seed == min(r.seed for r in runs)]:
        c = ml_collections.ConfigDict(g.config.to_dict())
        c.data_seed = g.seed + LMC_DATA_SEED_OFFSET
        c.probes.every_steps = c.probes.hessian_every_steps = 0
        c.probes.init_angle_every_steps = 0
        out.append(_derived(g, f'{g.name}_d{c.data_seed}', c, workdir, data_seed=c.data_seed))
    return out


# Model variants (`study.variants`): a grid run's config with an entry's assignments.


def _variant_specs(
    s: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    grid: list[RunSpec],
    workdir: str,
) -> list[RunSpec]:
    """The `study.variants` runs, after the grid: for each entry (in order) and each grid run
    its selector matches (in grid order), that run's config with the entry's assignments,
    named `<grid name less _s<seed>>_<tag>_s<seed>`. Raises StudyError for an entry that
    matches no grid run and for a variant config that cannot train (naming the run)."""
    out = []
    for text in s.variants:
        tag, override = parse_variant(text, config)
        matched = [g for g in grid if override.matches(g.depth, g.residual, g.norm, g.seed)]
        if not matched:
            raise StudyError(
                f'study.variants entry {text!r} matches no grid run; fix its selector or the '
                'grid (study.exclude, study.depths)'
            )
        for g in matched:
            c = run_config(g.config.to_dict(), [override], g.depth, g.residual, g.norm, g.seed)
            name = run_name(g.depth, g.residual, g.norm, g.seed, variant=tag)
            try:
                train.validate_config(c)
            except train.ConfigError as e:
                raise StudyError(f'run {name}: {e}') from None
            out.append(_derived(g, name, c, workdir, variant=tag))
    return out


def _derived(
    g: RunSpec, name: str, c: ml_collections.ConfigDict, workdir: str, **kwargs: Any
) -> RunSpec:
    """The RunSpec `name` with grid run `g`'s grid values, config `c` (locked) and the
    workdir `<workdir>/runs/<name>`; `kwargs` set what makes it no grid point."""
    return RunSpec(
        name, g.depth, g.residual, g.norm, g.seed, c.lock(), os.path.join(workdir, 'runs', name),
        **kwargs,
    )  # fmt: skip
