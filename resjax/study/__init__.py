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
- `study.constructed`: He et al. 2015's constructed solution, entries `'<depth>-><deeper>'`
  (`'20->56'`): after the grid, a plain net of the deeper depth built from each plain run of
  the shallow depth (blocks copied, added blocks identities: `resjax.construct`), trained with
  the same recipe; run `plain56from20_<norm>_s<seed>`.
- `study.constructed_lrs`, `study.constructed_steps`: the constructed solution as a controlled
  sweep instead (`grid._sweep_specs`, docs/study.md): per entry, norm, seed and lr, the built
  plain and residual nets and three restarts, `constructed_steps` steps at that constant lr.
- `study.lmc`: an LMC partner of each deepest plain and residual grid run of the first norm
  (`grid.barrier_targets`): same config and init, `data_seed` = seed + 1000, probes off; run
  `<name>_d<data_seed>`; figure 14 (`barriers`) measures the barrier between the two.
- `study.variants`: model variants as runs, entries `'<tag>: <selector> -> <key>=<value> ...'`
  (`'diracparam: depth=56 residual=false -> model.dirac=param'`; selector and assignments as
  in `study.overrides`, tag `[a-z0-9][a-z0-9.]*`, once each): after the grid, for each grid
  run the selector matches, its config with the assignments; run `plain56_bn_diracparam_s0`;
  no grid point (`RunSpec.group` None); `findings.shortcut` reads them.
- `study.degradation_margin`: the rule that decides "degradation reproduced" (`findings`).
- `study.inspect`: sizes of the inspection figures (the inspection library's `Options`) and
  which of them to draw (`figures`).

Layout of a study workdir: `runs/<name>/` (ordinary resjax workdirs, `<name>` e.g.
`plain56_bn_s0`), `inspect/<figure>/` (the inspection library's outputs), `figures/`
(PNG + JSON each), `status.json` (state and wall time of each run), `.locks/`, `findings.json`,
`report.md`, `report.html` (self-contained: figures embedded as base64 PNGs).

A run is *finished* when its metrics.jsonl has a row at `train.steps` holding eval metrics;
re-running a study skips finished runs, resumes partial ones (`train_and_evaluate` resumes
from the latest checkpoint) and skips runs that stopped on a non-finite loss (marked by a
`DIVERGED` file in their workdir) unless told to retry them. Findings use finished runs only;
figures draw whatever rows exist.

Several processes may share one study workdir (`run` says how; `claims` holds the locks): each
trains the next run neither finished nor held, and the last inspects and writes the report.

Modules: `config` (study keys, selectors, overrides), `grid` (the runs, their workdirs, states
and `train.py` commands), `claims` (the locks of runs and of the report), `run` (training and
inspection), `numbers` (per-run numbers from metrics.jsonl), `figures` (figures 1-4),
`findings` (a package: one small function per finding), `report` (findings.json, report.md,
report.html).
"""

from resjax.study.config import StudyError, validate_study_config
from resjax.study.grid import RunSpec, expand_grid, run_state, train_command
from resjax.study.report import write_report
from resjax.study.run import run_study
from resjax.study_config import default_study_config

__all__ = [
    'RunSpec',
    'StudyError',
    'default_study_config',
    'expand_grid',
    'run_state',
    'run_study',
    'train_command',
    'validate_study_config',
    'write_report',
]
