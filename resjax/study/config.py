"""Study config: `config.study`'s keys checked, selectors and per-run overrides parsed."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import ml_collections

from resjax.study_config import INSPECT_FIGURES, default_study_config, inspection_settings

SELECTOR_KEYS = ('depth', 'residual', 'norm', 'seed')


class StudyError(ValueError):
    """A study config or workdir that cannot run; the message is one line naming the fix."""


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


def parse_constructed(text: str) -> tuple[int, int]:
    """`'20->56'` -> (20, 56): the shallow run's depth and the constructed net's."""
    left, sep, right = text.partition('->')
    try:
        shallow, deep = int(left), int(right)
    except ValueError:
        shallow = deep = 0
    if not sep or shallow <= 0 or deep <= shallow:
        raise StudyError(
            f'study.constructed entry {text!r}: use "<depth>-><deeper depth>", e.g. "20->56"'
        )
    return shallow, deep


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
    _check_inspection(s.inspect)
    if not 0 <= s.degradation_margin < 1:
        raise StudyError(f'study.degradation_margin={s.degradation_margin} must be in [0, 1)')
    for text in s.overrides:
        parse_override(text, config)
    for text in s.constructed:
        shallow, deep = parse_constructed(text)
        if shallow not in s.depths or False not in s.residual:
            raise StudyError(
                f'study.constructed entry {text!r}: the grid has no plain-{shallow} to start from '
                f'(study.depths={tuple(s.depths)}, study.residual={tuple(s.residual)})'
            )
    for text in s.exclude:
        parse_selector(text, f'study.exclude entry {text!r}')
    tags = [parse_variant(text, config)[0] for text in s.variants]
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise StudyError(f'study.variants repeats the tag(s) {repeated}; give each entry its own')
    _check_sweep(s)


def _check_sweep(s: ml_collections.ConfigDict) -> None:
    """`study.constructed_lrs` and `study.constructed_steps`: positive numbers, and a grid
    with constructed entries and residual nets to build and restart."""
    lrs = s.constructed_lrs
    if not isinstance(lrs, tuple | list) or any(
        isinstance(x, bool) or not isinstance(x, int | float) or not x > 0 for x in lrs
    ):
        raise StudyError(
            f'study.constructed_lrs={lrs!r} must be a tuple of positive learning rates, e.g. '
            '(0.001, 0.01, 0.1), or () for none'
        )
    if len(set(lrs)) != len(lrs):
        raise StudyError(f'study.constructed_lrs={tuple(lrs)!r} repeats a learning rate')
    steps = s.constructed_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise StudyError(f'study.constructed_steps={steps!r} must be a positive integer')
    if lrs and not s.constructed:
        raise StudyError(
            'study.constructed_lrs needs study.constructed entries (e.g. "20->56") to sweep'
        )
    if lrs and True not in s.residual:
        raise StudyError(
            "study.constructed_lrs builds ResNets from the grid's ResNets; add True to "
            f'study.residual (now {tuple(s.residual)})'
        )


def _check_inspection(inspect: ml_collections.ConfigDict) -> None:
    """The inspection library's check of the options in `study.inspect` (unknown ones
    included), for the figures the study draws, as a StudyError."""
    from resjax import inspection  # The probes and matplotlib: only where a study is checked.

    try:
        opts = inspection.make_options(inspection_settings(inspect), 'study.inspect key')
        probes = ['interpolate' if f == 'barriers' else f for f in inspect.figures]
        inspection.check_options(opts, probes, prefix='study.inspect.')
    except inspection.InspectError as e:
        raise StudyError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Model variants (`study.variants`): one more run of each grid run an entry selects.

VARIANT_TAG = re.compile(r'[a-z0-9][a-z0-9.]*')
# Keys a variant may not set: they are the grid point's, which the variant run shares.
GRID_KEYS = ('model.depth', 'model.residual', 'model.norm', 'seed')


def parse_variant(text: str, base: ml_collections.ConfigDict) -> tuple[str, Override]:
    """Parses `'<tag>: <selector> -> key=value ...'` (e.g. `'diracparam: depth=56
    residual=false -> model.dirac=param'`) into (tag, Override); the part after the tag is a
    `study.overrides` entry (`parse_override`). The tag, lower-case letters, digits and dots
    (no `_`: it names the run, `plain56_bn_diracparam_s0`), must start with a letter or digit."""
    tag, sep, rest = text.partition(':')
    tag = tag.strip()
    if not sep or not VARIANT_TAG.fullmatch(tag):
        raise StudyError(
            f'study.variants entry {text!r}: use "<tag>: <selector> -> <key>=<value>" with a '
            'tag of lower-case letters, digits and dots, e.g. "diracparam: depth=56 '
            'residual=false -> model.dirac=param"'
        )
    try:
        override = parse_override(rest.strip(), base)
    except StudyError as e:  # Its message names the entry as an override: say whose it is.
        raise StudyError(f'study.variants entry {tag!r}: {e}') from None
    grid = sorted(k for k in override.assignments if k in GRID_KEYS)
    if grid:
        raise StudyError(
            f"study.variants entry {text!r} sets {grid}, which are the grid point's; set the "
            'grid (study.depths, study.residual, study.norms, study.seeds) instead'
        )
    return tag, override
