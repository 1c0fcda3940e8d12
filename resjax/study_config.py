"""`config.study`'s keys and defaults, importable without JAX (config files and the study
script's flag parsing load this; `resjax.study` holds the logic and documents the keys)."""

from __future__ import annotations

import ml_collections

INSPECT_FIGURES = ('spectrum', 'landscape2d', 'lesion', 'blocks', 'barriers')
# The keys of `study.inspect` that are the study's own; every other key is an option of the
# inspection library (`resjax.inspection.OPTIONS`, which checks them), passed to it as is.
STUDY_INSPECT_KEYS = ('figures', 'max_depth')


def default_study_config() -> ml_collections.ConfigDict:
    """`config.study` with every key the study reads (a config file edits what it changes)."""
    s = ml_collections.ConfigDict()
    s.depths = (20, 56)
    s.residual = (False, True)
    s.norms = ('batch', 'none')
    s.seeds = (0,)
    s.exclude = ()  # selectors of grid points left out, e.g. 'depth=110 residual=false'
    s.overrides = ()  # '<selector> -> <key>=<value> ...', e.g. 'norm=none -> train.lr=0.02'
    # He et al. 2015's constructed solution, e.g. '20->56': a plain-56 whose blocks are the
    # trained plain-20's and whose added blocks are identities (train.init_from), trained with
    # the same recipe after the grid; one run per norm and seed of the grid.
    s.constructed = ()
    # The constructed solution as a controlled sweep (resjax/study/grid.py, docs/study.md): for
    # each `constructed` entry 'a->b', norm, seed and lr here, `constructed_steps` steps at that
    # constant lr (no warm-up, fresh optimizer) of plain-b built from plain-a, ResNet-b built
    # from ResNet-a, and plain-a, ResNet-a and plain-b (random init) each restarted from itself.
    # () = off: the single `constructed` run with the grid's recipe instead; e.g.
    # (0.001, 0.01, 0.1).
    s.constructed_lrs = ()
    s.constructed_steps = 200
    # Model variants: '<tag>: <selector> -> <key>=<value> ...', e.g. 'diracparam: depth=56
    # residual=false -> model.dirac=param': for each grid run the selector matches, one more
    # run with its config and these assignments (run plain56_bn_diracparam_s0), trained after
    # the grid; no grid point (findings and figures 1-4 do not average it).
    s.variants = ()
    # Degradation (He et al. 2015) is "reproduced" when the deepest plain net's final training
    # error exceeds the shallowest's by more than this (absolute, fraction of examples).
    s.degradation_margin = 0.005
    # Linear mode connectivity (Frankle et al. 2020): for the first seed, a partner of the deepest
    # plain and residual nets of the first norm, same init, another data order (data_seed),
    # trained after the grid; figure 14 measures the loss barrier between the two solutions.
    s.lmc = False
    s.inspect = ml_collections.ConfigDict()
    s.inspect.figures = INSPECT_FIGURES
    s.inspect.max_depth = 0  # inspect nets up to this depth; 0 = the deepest of the grid
    # Inspection options the study's configs set (the library's defaults); a config may add
    # any other, e.g. `config.study.inspect.top_k = 5`.
    s.inspect.examples = 256  # probe examples: the first N of the epoch-0 training order
    s.inspect.batch = 128
    s.inspect.bn_mode = 'eval'  # BN in the spectrum and landscape: running statistics
    s.inspect.seed = 0
    s.inspect.lanczos_order = 40  # SLQ: Lanczos steps (HVPs) per draw
    s.inspect.slq_draws = 3
    s.inspect.grid = 21  # landscape: points per axis
    s.inspect.range = 1.0  # landscape: coefficients in [-range, range]
    s.inspect.chunk = 8  # landscape: grid points per vmapped call
    return s


def inspection_settings(inspect: ml_collections.ConfigDict) -> dict:
    """The inspection library's options among `study.inspect`'s keys: {option: value}."""
    return {k: v for k, v in inspect.items() if k not in STUDY_INSPECT_KEYS}


def shrink_for_smoke(s: ml_collections.ConfigDict) -> None:
    """The `smoke` argument of a study config: two small depths (a constructed entry becomes
    '8->14'; a variant's selector term `depth=` the smoke depth of the same rank: the grid's
    deepest depth 14, any other 8), one seed, tiny inspection, a sweep of at most 10 steps a
    run."""
    s.variants = tuple(_smoke_variant(text, max(s.depths)) for text in s.variants)
    s.depths = (8, 14)
    s.exclude = ()
    # A constructed entry names the full grid's depths: at the smoke depths it is '8->14'.
    s.constructed = ('8->14',) if s.constructed else ()
    s.seeds = s.seeds[:1]
    s.inspect.max_depth = 0
    s.inspect.examples = 32
    s.inspect.batch = 32
    s.inspect.lanczos_order = 4
    s.inspect.slq_draws = 1
    s.inspect.grid = 5
    s.inspect.chunk = 25
    s.constructed_steps = min(s.constructed_steps, 10)


def _smoke_variant(text: str, deepest: int) -> str:
    """A `study.variants` entry with its selector's `depth=<d>` term at the smoke depths (14 if
    d is the grid's deepest depth, else 8); the rest as it was."""
    left, sep, right = text.partition('->')
    tag, colon, selector = left.rpartition(':')
    terms = [
        (f'depth={14 if t == f"depth={deepest}" else 8}' if t.startswith('depth=') else t)
        for t in selector.split()
    ]
    return f'{tag}{colon} {" ".join(terms)} {sep}{right}' if sep else text
