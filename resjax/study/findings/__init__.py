"""Findings: each a small registered function of the runs' numbers that states one claim with
its numbers, the rule that decides it, and the paper claim it tests.

A finding is `@finding(id, figure, title, paper)` on `compute(evidence) -> Claim | str | None`
(`per_norm=True`: `compute(evidence, norm)`, once per `study.norms` value, id `<id>_<norm>`).
It returns a `Claim`, or a string naming what is missing (the report says "not available"), or
None when the grid cannot pose the question (one depth only). Adding a finding is one function.

Modules: `base` (the framework and `compute_findings`), `paper` (findings 1-7, the papers'
claims), `question` (the question's sub-questions), `sweep` (claim (b) from the constructed-solution
sweep, `study.constructed_lrs`), `shortcut` (what the shortcut provides, from the
`study.variants` runs). Importing the package registers every
finding, `paper`'s first, in report order.
"""

from resjax.study.findings import paper, question, shortcut  # noqa: F401  (registers them)
from resjax.study.findings.base import (
    FINDINGS,
    Claim,
    Evidence,
    Finding,
    FindingSpec,
    cap,
    compute_findings,
    finding,
    pct,
    times,
)

__all__ = [
    'FINDINGS',
    'Claim',
    'Evidence',
    'Finding',
    'FindingSpec',
    'cap',
    'compute_findings',
    'finding',
    'pct',
    'times',
]
