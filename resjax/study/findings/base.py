"""The findings' framework: the evidence they read (`Evidence`), what one returns (`Claim`),
the registry (`finding`, `FINDINGS`), `compute_findings`, and the number formats the sentences
use. The rules themselves are in `paper` and `question`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from resjax.study.grid import norm_title
from resjax.study.numbers import RunData, run_numbers


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals."""
    return f'{100 * x:.2f}%'


def times(x: float) -> str:
    """A ratio as '1.23x'."""
    return f'{x:.3g}x'


@dataclasses.dataclass(frozen=True)
class Seeds:
    """One number of one net (or one condition) over the study's seeds, a value per seed."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """How many seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean over seeds."""
        return float(np.mean(self.values))

    @property
    def range(self) -> float:
        """max - min over seeds: the seed-to-seed spread (0 with one seed)."""
        return float(np.max(self.values) - np.min(self.values))

    def show(self, fmt: Callable[[float], str] = lambda x: f'{x:.3g}') -> str:
        """'0.123' for one seed, '0.123 (0.11 to 0.14 over 3 seeds)' for several: the mean, then
        the lowest and highest seed."""
        if self.n == 1:
            return fmt(self.mean)
        lo, hi = fmt(float(np.min(self.values))), fmt(float(np.max(self.values)))
        return f'{fmt(self.mean)} ({lo} to {hi} over {self.n} seeds)'

    def json(self) -> dict:
        """{'mean', 'range', 'values'} for findings.json."""
        return {'mean': self.mean, 'range': self.range, 'values': list(self.values)}


def seeds_of(values: Any) -> Seeds:
    """`Seeds` of the given per-seed values (None entries dropped); raises ValueError if none
    is left."""
    kept = tuple(float(v) for v in values if v is not None)
    if not kept:
        raise ValueError('no value for any seed')
    return Seeds(kept)


def gap(a: Seeds, b: Seeds, margin: float = 0.0) -> int:
    """+1 if a's mean exceeds b's, -1 if it falls below, by more than `margin` and by more
    than the larger seed range of the two (which is 0 for a single seed: then the margin
    alone decides and the verdict is provisional); 0 if the difference does not count."""
    d = a.mean - b.mean
    if abs(d) <= margin or abs(d) <= max(a.range, b.range):
        return 0
    return 1 if d > 0 else -1


def seed_note(*groups: Seeds) -> str:
    """What the seeds allow, for a verdict: '; provisional: one seed' or '' with 2+ seeds
    on every side."""
    return '; provisional: one seed' if min(g.n for g in groups) < 2 else ''


def cap(text: str) -> str:
    """`text` with its first letter upper-case."""
    return text[:1].upper() + text[1:]


@dataclasses.dataclass
class Evidence:
    """What findings are computed from: `study` (config.study), the runs and their numbers
    (`run_numbers`, by run name), and the inspection figures' numbers ({figure: JSON or None})."""

    study: ml_collections.ConfigDict
    runs: list[RunData]
    inspection: dict[str, Any]

    def __post_init__(self):
        self.numbers = {r.spec.name: run_numbers(r) for r in self.runs}

    @property
    def depths(self) -> list[int]:
        """The grid's depths, ascending."""
        return sorted(self.study.depths)

    def mean(self, depth: int, residual: bool, norm: str, key: str) -> tuple[float | None, int]:
        """Mean of run number `key` over the finished seeds of a grid point, and how many."""
        values = [
            self.numbers[r.spec.name][key]
            for r in self.runs
            if r.spec.group == (depth, residual, norm) and r.state == 'finished'
        ]
        values = [v for v in values if v is not None]
        return (float(np.mean(values)) if values else None), len(values)

    @property
    def seeds(self) -> list[int]:
        """The grid's seeds that have a finished run, ascending."""
        return sorted({r.spec.seed for r in self.runs if r.state == 'finished'})

    def first_seed_finished(self) -> list[RunData]:
        """The finished runs of the grid's first seed (not the `study.constructed_lrs` sweep's
        short runs at other lrs: `findings.sweep` reads those)."""
        seed = min(r.spec.seed for r in self.runs)
        return [
            r
            for r in self.runs
            if r.state == 'finished' and r.spec.seed == seed and r.spec.lr is None
        ]

    def plain_and_residual(self, per_net: dict[str, dict], key: str) -> tuple[Any, Any]:
        """`key` of the first plain and the first residual net in `per_net` (keyed by run
        label, as inspection results are), None for a kind that is not there."""
        residual = {r.spec.label: r.spec.residual for r in self.runs}
        pick = lambda kind: next(
            (v[key] for k, v in per_net.items() if residual.get(k) is kind), None
        )
        return pick(False), pick(True)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A finding's result: the statement with its numbers, the rule that decides the verdict,
    the verdict, and every number as JSON; `figure` replaces the registered figure number
    (a finding whose evidence is drawn in another figure in some studies)."""

    text: str
    rule: str
    verdict: str
    numbers: dict
    figure: int | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """One entry of findings.json and of the report."""

    id: str
    figure: int
    title: str
    text: str
    rule: str
    verdict: str
    numbers: dict
    paper: str
    question: str = (
        ''  # One of the question's sub-questions, answered in the report's first section.
    )


@dataclasses.dataclass(frozen=True)
class FindingSpec:
    """A registered finding (see the module docstring)."""

    id: str
    figure: int
    title: str
    paper: str
    per_norm: bool
    compute: Callable[..., Claim | str | None]
    question: str = ''


FINDINGS: list[FindingSpec] = []


def finding(
    id: str, figure: int, title: str, paper: str, per_norm: bool = False, question: str = ''
) -> Callable[[Callable[..., Claim | str | None]], Callable[..., Claim | str | None]]:
    """Registers the decorated function as a finding, in report order; `question` makes it
    the answer to that sub-question of the report's first section."""

    def register(compute):
        FINDINGS.append(FindingSpec(id, figure, title, paper, per_norm, compute, question))
        return compute

    return register


def compute_findings(
    config: ml_collections.ConfigDict, runs: list[RunData], inspection: dict[str, Any]
) -> list[dict]:
    """Every registered finding on these runs, as findings.json entries (`Finding` fields)."""
    evidence = Evidence(config.study, runs, inspection)
    out = []
    for spec in FINDINGS:
        for norm in evidence.study.norms if spec.per_norm else [None]:
            claim = spec.compute(evidence, norm) if spec.per_norm else spec.compute(evidence)
            fid = f'{spec.id}_{norm}' if spec.per_norm else spec.id
            title = f'{spec.title} ({norm_title(norm)})' if spec.per_norm else spec.title
            if claim is None:
                continue
            if isinstance(claim, str):
                claim = Claim(f'Not available yet: {claim}.', '', 'not available', {})
            out.append(
                Finding(
                    fid,
                    claim.figure or spec.figure,
                    title,
                    claim.text,
                    claim.rule,
                    claim.verdict,
                    claim.numbers,
                    spec.paper,
                    spec.question,
                )  # fmt: skip
            )
    return [dataclasses.asdict(f) for f in out]
