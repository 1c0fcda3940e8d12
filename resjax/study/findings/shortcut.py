"""What the shortcut provides (issue 25): the `study.variants` runs of the deepest plain net
(Dirac-parametrised, Dirac-initialised) and ResNet (shortcut scaled), each against the plain
net and the ResNet of its depth, norm, recipe and seed; the finding says which of three
answers the final test errors support."""

from __future__ import annotations

from resjax.study.findings.base import Claim, Evidence, Seeds, finding, gap, pct, seed_note
from resjax.study.findings.question import deepest_pairs
from resjax.study.numbers import RunData

CLAIM_SHORTCUT = (
    'Three answers to "why is the residual easier to learn?" predict different nets: (1) the '
    'identity as the zero of the parametrisation (a residual block is x -> x with its weights '
    'at zero): a Dirac-parametrised plain net (DiracNets, Zagoruyko & Komodakis 2017) closes '
    'the plain-ResNet gap, a Dirac-initialised one does not; (2) a good starting point: '
    'starting at the identity (Dirac init) closes it; (3) explicit short paths (Veit et al. '
    '2016): neither closes it. He et al. 2016 (Identity Mappings, Table 1): a shortcut scaled '
    'by 0.5 hurts.'
)
SHORTCUT_RULE = (
    'per seed, on the deepest plain/ResNet grid pair (first norm) and the variant runs '
    '(study.variants) of the same depth, norm and seed, picked by their model config: final '
    'test error err; gap = err(plain) - err(ResNet), midpoint = (err(plain) + err(ResNet)) / 2. '
    'A variant closes most of the gap iff its error is below the midpoint, and does not iff '
    'above, by more than study.degradation_margin and the seed spread; otherwise it is '
    'undecided. Verdict: "undecided: no gap to explain" unless the plain net\'s error exceeds '
    'the ResNet\'s by as much; else "the zero of the parametrisation matters" iff the '
    'Dirac-parametrised plain net (model.dirac=param) closes most of the gap and the '
    'Dirac-initialised one (model.dirac=init) does not; "the starting point matters" iff the '
    'Dirac-initialised one closes it, whatever the other does; "the explicit paths matter" iff '
    'neither closes it; "undecided" otherwise (a variant within the spread or margin of the '
    'midpoint, or missing). The closure (err(plain) - err(variant)) / gap of each, and the '
    'ResNet with a scaled shortcut (model.shortcut_scale != 1) against the ResNet, are '
    'reported beside it, not used'
)
KINDS = (('param', 'Dirac-parametrised'), ('init', 'Dirac-initialised'))


def _variants(ev: Evidence, like: RunData) -> list[RunData]:
    """The finished variant runs of `like`'s depth, norm and seed."""
    return [
        r
        for r in ev.runs
        if r.spec.variant is not None
        and r.state == 'finished'
        and (r.spec.depth, r.spec.norm, r.spec.seed) == (like.spec.depth, like.spec.norm,
                                                          like.spec.seed)
    ]  # fmt: skip


def _dirac(run: RunData) -> str | None:
    """'param' or 'init' for a plain net with that `model.dirac`, else None."""
    dirac = run.spec.config.model.get('dirac', 'none')
    return dirac if not run.spec.residual and dirac in ('param', 'init') else None


def _closes(v: Seeds, mid: Seeds, margin: float) -> int:
    """+1 if the variant's error is below the midpoint (closes most of the gap), -1 if above,
    0 within the margin or the seed spread."""
    return -gap(v, mid, margin)


@finding('question_shortcut', 15, 'What does the shortcut provide?', CLAIM_SHORTCUT,
         question='What does the shortcut provide: the zero, the start or the paths?')  # fmt: skip
def question_shortcut(ev: Evidence) -> Claim | str | None:
    """Final test errors of the deepest pair and its variants, per seed, against the pair's
    midpoint (module docstring; `SHORTCUT_RULE`). None without `study.variants`."""
    if not ev.study.get('variants', ()):
        return None
    depth, pairs = deepest_pairs(ev)
    pairs = [(p, r) for p, r in pairs if r is not None]
    if not pairs:
        return f'finished plain-{depth} and ResNet-{depth} grid runs'
    margin = ev.study.degradation_margin
    err = lambda run: ev.numbers[run.spec.name]['final_test_error']  # noqa: E731
    plain, resnet = (Seeds(tuple(err(x[i]) for x in pairs)) for i in (0, 1))
    p_label, r_label = pairs[0][0].spec.label, pairs[0][1].spec.label
    nums: dict = {
        'depth': depth,
        'seeds': [p.spec.seed for p, _ in pairs],
        'margin': margin,
        'plain_test_error': plain.json(),
        'resnet_test_error': resnet.json(),
    }
    text = (
        f'Final test error (BN eval mode) of the deepest pair, the controls: '
        f'{p_label} {plain.show(pct)}, {r_label} {resnet.show(pct)}. '
    )
    # Per Dirac kind: (its errors, the midpoints of the same seeds, closures, its runs).
    found: dict[str, tuple[Seeds, Seeds, list[float], list[RunData]]] = {}
    for kind, _ in KINDS:
        runs, mids, closure = [], [], []
        for p, r in pairs:
            v = next((x for x in _variants(ev, p) if _dirac(x) == kind), None)
            if v is None:
                continue
            runs.append(v)
            mids.append((err(p) + err(r)) / 2)
            if err(p) != err(r):
                closure.append((err(p) - err(v)) / (err(p) - err(r)))
        if runs:
            found[kind] = (Seeds(tuple(err(v) for v in runs)), Seeds(tuple(mids)), closure, runs)
    scaled: dict[float, list[tuple[RunData, RunData]]] = {}
    for _, r in pairs:
        for v in _variants(ev, r):
            if v.spec.residual and v.spec.config.model.shortcut_scale != 1.0:
                scaled.setdefault(v.spec.config.model.shortcut_scale, []).append((v, r))
    plain_worse = gap(plain, resnet, margin) == 1
    text += (
        f'Gap {pct(plain.mean - resnet.mean)} (mean over seeds); the plain net is '
        + ('' if plain_worse else 'not ')
        + f'worse beyond the margin {pct(margin)} and the seed spread. '
    )
    closes: dict[str, int] = {}
    for kind, title in KINDS:
        if kind not in found:
            text += f'No finished {title} plain-{depth} (model.dirac={kind}) variant. '
            continue
        v, mid, closure, runs = found[kind]
        closes[kind] = _closes(v, mid, margin)
        word = {1: 'below', -1: 'above', 0: 'within the margin or spread of'}[closes[kind]]
        text += (
            f'{runs[0].spec.label}: {v.show(pct)}, {word} the midpoint {mid.show(pct)}'
            # Without a gap its closure is a ratio of noise: not shown.
            + (f'; it closes {_share(closure)} of the gap' if closure and plain_worse else '')
            + '. '
        )
        nums[f'dirac_{kind}'] = {
            'runs': [x.spec.name for x in runs],
            'test_error': v.json(),
            'midpoint': mid.json(),
            'closes': closes[kind],
            'closure': closure,
        }
    for scale, both in sorted(scaled.items()):
        s, ctrl = (Seeds(tuple(err(x[i]) for x in both)) for i in (0, 1))
        hurts = gap(s, ctrl, margin)
        text += (
            f'{both[0][0].spec.label}: {s.show(pct)} against {ctrl.show(pct)} for {r_label} of '
            'the same seeds, '
            + {
                1: 'worse beyond the margin and spread'
                + (': the runs agree with He et al. 2016' if scale == 0.5 else ''),
                -1: 'better beyond the margin and spread'
                + (': the runs disagree with He et al. 2016' if scale == 0.5 else ''),
                0: 'no difference beyond the margin and spread'
                + (': the runs cannot confirm He et al. 2016' if scale == 0.5 else ''),
            }[hurts]
            + '. '
        )
        nums[f'shortcut_x{scale:g}'] = {
            'runs': [x[0].spec.name for x in both],
            'test_error': s.json(),
            'resnet_test_error': ctrl.json(),
            'worse': hurts,
        }
    verdict, why = _verdict(plain_worse, closes)
    nums['verdict_inputs'] = {'plain_worse': plain_worse, 'closes': closes}
    groups = [plain, resnet] + [found[k][0] for k in found]
    return Claim(text + why, SHORTCUT_RULE, verdict + seed_note(*groups), nums)


def _share(closure: list[float]) -> str:
    """The closure as '85%' (one seed) or '85% (70% to 100% over 2 seeds)'."""
    return Seeds(tuple(closure)).show(lambda x: f'{100 * x:.0f}%')


def _verdict(plain_worse: bool, closes: dict[str, int]) -> tuple[str, str]:
    """(verdict, the sentence that says why) from `SHORTCUT_RULE`."""
    if not plain_worse:
        return 'undecided: no gap to explain', (
            'The plain net is not worse than the ResNet here: there is no gap for a variant '
            'to close.'
        )
    dp, di = closes.get('param'), closes.get('init')
    if di == 1:
        also = ' (the Dirac-parametrised net closes it too)' if dp == 1 else ''
        return 'the starting point matters', (
            f'Starting at the identity closes most of the gap{also}: the start suffices, '
            'whatever the parametrisation.'
        )
    if dp == 1 and di == -1:
        return 'the zero of the parametrisation matters', (
            'The Dirac parametrisation closes most of the gap and the Dirac start alone does '
            'not: having the identity at the zero of the parametrisation matters.'
        )
    if dp == -1 and di == -1:
        return 'the explicit paths matter', (
            'Neither the Dirac parametrisation nor the Dirac start closes most of the gap: '
            'what the ResNet has beyond them, its explicit short paths, matters.'
        )
    open_ = [
        f'the {title} net is '
        + ('missing' if closes.get(k) is None else 'within the margin or spread of the midpoint')
        for k, title in KINDS
        if closes.get(k) in (None, 0)
    ]
    return 'undecided', f'The runs cannot decide: {" and ".join(open_)}.'
