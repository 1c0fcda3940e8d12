"""Findings: each a small registered function of the runs' numbers that states one claim with
its numbers, the rule that decides it, and the paper claim it tests.

A finding is `@finding(id, figure, title, paper)` on `compute(evidence) -> Claim | str | None`
(`per_norm=True`: `compute(evidence, norm)`, once per `study.norms` value, id `<id>_<norm>`).
It returns a `Claim`, or a string naming what is missing (the report says "not available"), or
None when the grid cannot pose the question (one depth only). Adding a finding is one function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from resjax.probes import signals
from resjax.study.grid import norm_title
from resjax.study.numbers import RunData, added_block_drift, added_blocks, run_numbers

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


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals."""
    return f'{100 * x:.2f}%'


def times(x: float) -> str:
    """A ratio as '1.23x'."""
    return f'{x:.3g}x'


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

    def first_seed_finished(self) -> list[RunData]:
        """The finished runs of the grid's first seed."""
        seed = min(r.spec.seed for r in self.runs)
        return [r for r in self.runs if r.state == 'finished' and r.spec.seed == seed]

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
    the verdict, and every number as JSON."""

    text: str
    rule: str
    verdict: str
    numbers: dict


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
                    spec.figure,
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


# ---------------------------------------------------------------------------------------------
# Figures 1-4: from the runs' metrics.


@finding('degradation', 1, 'Degradation', HE_DEGRADATION, per_norm=True)
def degradation(ev: Evidence, norm: str) -> Claim | str | None:
    """Final training error of the deepest vs the shallowest plain net (mean over finished
    seeds), and the same for ResNets."""
    lo, hi = ev.depths[0], ev.depths[-1]
    if lo == hi:
        return None
    margin = ev.study.degradation_margin
    vals: dict[str, Any] = {}
    for residual in (False, True):
        kind = 'resnet' if residual else 'plain'
        for d in (lo, hi):
            for key in ('final_train_error', 'final_test_error', 'mean_train_error'):
                vals[f'{kind}{d}_{key}'], vals[f'{kind}{d}_seeds'] = ev.mean(d, residual, norm, key)
    missing = [k for k in (f'plain{lo}', f'plain{hi}') if vals[f'{k}_final_train_error'] is None]
    if missing:
        return f'finished runs of {", ".join(missing)} ({norm_title(norm)})'
    v = lambda kind, d, key: vals[f'{kind}{d}_{key}']
    p_lo, p_hi = v('plain', lo, 'final_train_error'), v('plain', hi, 'final_train_error')
    reproduced = p_hi - p_lo > margin
    verdict = 'reproduced' if reproduced else 'not reproduced'
    text = (
        f'{norm_title(norm)}: final training error plain-{hi} vs plain-{lo}: '
        f'{pct(p_hi)} vs {pct(p_lo)} (test {pct(v("plain", hi, "final_test_error"))} vs '
        f'{pct(v("plain", lo, "final_test_error"))}; mean training error over the run '
        f'{pct(v("plain", hi, "mean_train_error"))} vs {pct(v("plain", lo, "mean_train_error"))}'
        f'): the degradation problem is {verdict}.'
    )
    r_lo, r_hi = v('resnet', lo, 'final_train_error'), v('resnet', hi, 'final_train_error')
    if r_lo is not None and r_hi is not None:
        fixed = r_hi - r_lo <= margin
        text += (
            f' ResNet-{hi} vs ResNet-{lo}: {pct(r_hi)} vs {pct(r_lo)} (test '
            f'{pct(v("resnet", hi, "final_test_error"))} vs '
            f'{pct(v("resnet", lo, "final_test_error"))}): the deeper ResNet '
            f'{"is no worse" if fixed else "is worse"} (same margin).'
        )
        vals['resnet_deeper_no_worse'] = fixed
    vals['reproduced'], vals['margin'] = reproduced, margin
    rule = (
        "reproduced iff the deeper plain net's final training error exceeds the shallower's "
        f'by more than {pct(margin)}'
    )
    return Claim(text, rule, verdict, vals)


@finding('init_gradients', 2, 'Gradients at init', HE_HEALTHY, per_norm=True)
def init_gradients(ev: Evidence, norm: str) -> Claim | str:
    """First/last conv weight-gradient norm ratio at init, per depth, plain and residual."""
    parts, nums = [], {}
    for d in ev.depths:
        for residual in (False, True):
            kind = 'resnet' if residual else 'plain'
            g, _ = ev.mean(d, residual, norm, 'init_grad_ratio')
            a, _ = ev.mean(d, residual, norm, 'init_act_grad_ratio')
            if g is None and a is None:
                continue
            nums[f'{kind}{d}_init_grad_ratio'], nums[f'{kind}{d}_init_act_grad_ratio'] = g, a
            if g is not None:
                name = f'{"ResNet" if residual else "plain"}-{d}'
                parts.append(f'{name} {times(g)} (activation gradients {times(a)})')
    if not parts:
        return f'step-0 probes of finished runs ({norm_title(norm)})'
    text = (
        f"{norm_title(norm)}: at init, the first conv layer's weight-gradient norm over the "
        "last conv layer's (signals.first_last_ratio of the step-0 probe): "
        + '; '.join(parts)
        + '.'
    )
    have = [d for d in ev.depths if nums.get(f'plain{d}_init_grad_ratio') is not None]
    verdict = 'not available'
    if have:
        lo, hi = have[0], have[-1]
        p, r = nums[f'plain{hi}_init_grad_ratio'], nums.get(f'resnet{hi}_init_grad_ratio')
        verdict = 'exploding' if p > 1 else 'vanishing'
        direction = 'grow towards the input' if p > 1 else 'shrink towards the input'
        text += f' In plain-{hi} the gradients {direction} ({verdict})'
        if r is not None:
            text += f'; in ResNet-{hi} the ratio is {times(r)}'
        if lo != hi:
            nums['plain_ratio_growth'] = p / nums[f'plain{lo}_init_grad_ratio']
            text += f'; from plain-{lo} to plain-{hi} the ratio changes '
            text += times(nums['plain_ratio_growth'])
        text += '.'
    return Claim(text, 'first/last > 1 is growing towards the input', verdict, nums)


@finding('responses', 3, 'Layer responses', HE_RESPONSES, per_norm=True)
def responses(ev: Evidence, norm: str) -> Claim | str:
    """Mean response std at the last probe, plain vs ResNet at each depth."""
    nums, parts, smaller = {}, [], []
    for d in ev.depths:
        p, _ = ev.mean(d, False, norm, 'final_response_std')
        r, _ = ev.mean(d, True, norm, 'final_response_std')
        nums[f'plain{d}_response_std'], nums[f'resnet{d}_response_std'] = p, r
        if p is not None and r is not None:
            parts.append(f'plain-{d} {p:.4g} vs ResNet-{d} {r:.4g}')
            smaller.append(r < p)
    if not parts:
        return f'probe rows of finished plain/ResNet pairs ({norm_title(norm)})'
    res = [nums[f'resnet{d}_response_std'] for d in ev.depths]
    deeper_smaller = res[-1] < res[0] if len(res) > 1 and None not in res else None
    text = (
        f'{norm_title(norm)}: mean response std over the 3x3 layers at the last probe: '
        + '; '.join(parts)
        + f'. ResNet responses are smaller at {sum(smaller)} of {len(smaller)} depths'
    )
    if deeper_smaller is not None:
        text += f"; the deepest ResNet's are {'' if deeper_smaller else 'not '}smaller than "
        text += "the shallowest's"
    nums['resnet_smaller_at_every_depth'] = all(smaller)
    nums['deeper_resnet_smaller'] = deeper_smaller
    verdict = 'confirmed' if all(smaller) else 'contradicted'
    return Claim(text + '.', 'confirmed iff smaller at every depth', verdict, nums)


@finding('sharpness', 4, 'Sharpness against 2/lr', EOS)
def sharpness(ev: Evidence) -> Claim | str:
    """The last lambda_max of each finished run (first seed) against 2/lr."""
    keys = ('final_lambda_max', 'final_two_over_lr', 'final_hessian_step', 'max_sharpness_ratio')
    parts, nums, above, ever = [], {}, [], []
    for r in ev.first_seed_finished():
        n = ev.numbers[r.spec.name]
        if n['final_lambda_max'] is None:
            continue
        nums[r.spec.name] = {k: n[k] for k in keys}
        above.append(n['final_lambda_max'] > n['final_two_over_lr'])
        ever.append(n['max_sharpness_ratio'] > 1)
        parts.append(
            f'{r.spec.label} {n["final_lambda_max"]:.3g} vs 2/lr {n["final_two_over_lr"]:.3g} '
            f'at step {n["final_hessian_step"]} (max over training {n["max_sharpness_ratio"]:.2f} '
            'of 2/lr)'
        )
    if not parts:
        return 'sharpness probes of finished runs'
    text = (
        'lambda_max at the last sharpness probe vs 2/lr: ' + '; '.join(parts) + f'. {sum(above)} '
        f'of {len(above)} nets end above 2/lr, {sum(ever)} exceed it at some probe.'
    )
    verdict = 'above 2/lr' if any(above) else 'below 2/lr'
    return Claim(text, 'above iff lambda_max > 2/lr', verdict, nums)


# ---------------------------------------------------------------------------------------------
# Figures 5-7: from the inspection library's numbers, one entry per inspected net.


def _per_net(
    results: dict[str, Any], describe: Callable[[dict], tuple[dict, str] | None]
) -> tuple[dict[str, dict], list[str]]:
    """`describe(value) -> (numbers, sentence)` of each inspected net (None: leave it out)."""
    nums, parts = {}, []
    for label, value in results.items():
        described = describe(value)
        if described:
            nums[label], sentence = described
            parts.append(f'{label}: {sentence}')
    return nums, parts


def _li_et_al(
    ev: Evidence, what: str, parts: list[str], nums: dict, key: str, measure: str
) -> Claim:
    """Li et al. 2018's comparison: consistent iff the residual net's `key` (`measure`) is
    below the plain net's."""
    plain, residual = ev.plain_and_residual(nums, key)
    verdict = 'one net only'
    if plain is not None and residual is not None:
        verdict = 'consistent' if residual < plain else 'not consistent'
    text = f'{what}: ' + '; '.join(parts) + f'. {cap(verdict)} with Li et al.'
    rule = f"consistent iff the residual net's {measure} is below the plain net's"
    return Claim(text, rule, verdict, nums)


@finding('spectrum', 5, 'Hessian spectrum', LI_SPECTRUM)
def spectrum(ev: Evidence) -> Claim | str | None:
    """|lambda_min / lambda_max| of the SLQ Ritz values, plain vs residual."""
    if 'spectrum' not in ev.study.inspect.figures:
        return None  # Not drawn in this study: no question posed.
    if not ev.inspection.get('spectrum'):
        return 'the spectrum of the deepest finished nets'

    def describe(v):
        ratio = abs(min(v['ritz_min'], 0.0)) / v['ritz_max']
        nums = {'ritz_min': v['ritz_min'], 'ritz_max': v['ritz_max'], 'neg_ratio': ratio}
        return {**nums, 'step': v['step']}, (
            f'lambda_max {v["ritz_max"]:.3g}, lambda_min {v["ritz_min"]:.3g}, '
            f'|lambda_min / lambda_max| {ratio:.3g}'
        )

    nums, parts = _per_net(ev.inspection['spectrum'], describe)
    plain, residual = ev.plain_and_residual(nums, 'ritz_max')
    if plain is not None and residual is not None:
        nums['plain_over_resnet_lambda_max'] = plain / residual
        parts.append(f"the plain net's lambda_max is {times(plain / residual)} the ResNet's")
    i = ev.study.inspect
    setting = f'SLQ Ritz values, BN {i.bn_mode} mode, {i.examples} examples'
    return _li_et_al(ev, f'Hessian spectrum at the end of training ({setting})', parts, nums,
                     'neg_ratio', '|lambda_min / lambda_max|')  # fmt: skip


@finding('landscape', 6, '2-D loss landscape', LI_LANDSCAPE)
def landscape(ev: Evidence) -> Claim | str | None:
    """Non-convex fraction of each net's 2-D slice, plain vs residual."""
    if 'landscape2d' not in ev.study.inspect.figures:
        return None  # Not drawn in this study: no question posed.
    if not ev.inspection.get('landscape2d'):
        return 'the landscape of the deepest finished nets'

    def describe(v):
        c = v['convexity']
        keys = ('nonconvex_fraction', 'mean_abs_ratio')
        nums = {**{k: c[k] for k in keys}, **{k: v[k] for k in ('loss_at_0', 'loss_max', 'step')}}
        return nums, (
            f'loss {v["loss_at_0"]:.3g} at the centre, {v["loss_max"]:.3g} at most; '
            f'{100 * c["nonconvex_fraction"]:.0f}% of the grid non-convex, mean '
            f'|h_min / h_max| {c["mean_abs_ratio"]:.3g}'
        )

    nums, parts = _per_net(ev.inspection['landscape2d']['runs'], describe)
    i = ev.study.inspect
    setting = f'{i.grid}x{i.grid} grid over [-{i.range:g}, {i.range:g}]^2, filter-normalised '
    setting += 'random directions'
    return _li_et_al(ev, f'2-D loss landscape ({setting})', parts, nums, 'nonconvex_fraction',
                     'non-convex fraction')  # fmt: skip


@finding('lesion', 7, 'Lesions', VEIT)
def lesion(ev: Evidence) -> Claim | str | None:
    """Test-error increase from removing one residual block, per ResNet."""
    if 'lesion' not in ev.study.inspect.figures:
        return None  # Not drawn in this study: no question posed.
    if not ev.inspection.get('lesion'):
        return 'the lesion study of finished ResNets'

    def describe(v):
        if not v['blocks']:
            return None
        base = v['test_error_intact']
        ident = [b['test_error'] - base for b in v['blocks'] if b['shortcut'] == 'identity']
        down = [b['test_error'] - base for b in v['blocks'] if b['shortcut'] != 'identity']
        med = float(np.median(ident)) if ident else None
        nums = {
            'intact': base,
            'median_increase_identity': med,
            'max_increase_identity': max(ident) if ident else None,
            'max_increase_downsampling': max(down) if down else None,
            'step': v['step'],
        }
        show = lambda x: pct(x) if x is not None else '-'
        return nums, (
            f'intact {pct(base)}; removing one identity block adds {show(med)} (median), '
            f'{show(nums["max_increase_identity"])} (worst); a downsampling block adds up to '
            f'{show(nums["max_increase_downsampling"])}'
        )

    nums, parts = _per_net(ev.inspection['lesion'], describe)
    medians = [n['median_increase_identity'] for n in nums.values()]
    medians = [m for m in medians if m is not None]
    verdict = 'confirmed' if medians and all(m < 0.05 for m in medians) else 'contradicted'
    text = 'Lesions (test error, BN eval mode): ' + '; '.join(parts) + f'. {cap(verdict)}.'
    rule = (
        'confirmed iff the median increase over identity blocks is below 5 points for every ResNet'
    )
    return Claim(text, rule, verdict, nums)


# ---------------------------------------------------------------------------------------------
# "What the question asks, and what the runs say": one finding per sub-question (figures 2,
# 8-11), from the deepest plain and residual nets of the first norm (BN first) and seed, and
# the constructed runs.

FOLKLORE = (
    'Folklore: "ResNets work because they fix vanishing gradients". He et al. 2015 (Sec. 4.1): '
    'BN plain nets have healthy gradient norms, so the degradation is not vanishing gradients.'
)
CLAIM_A = (
    'Claim (a), He et al. 2015 (Sec. 3.1, 4.2): deep layers need only small changes '
    '(H_{n+1} ~ H_n); a residual block learns a small F(x) = H(x) - x, while plain layers must '
    'build a near-identity out of nonlinear layers.'
)
CLAIM_B = (
    "Claim (b), He et al. 2015 (Sec. 1, 4.1): a deeper plain net contains the shallow net's "
    'solution (added layers = identity), so its higher training error means the solver fails to '
    'find a solution that exists.'
)
CLAIM_C = (
    'Claim (c): the plain net settles in another basin far from its start; the residual net '
    'starts "close" to a good solution.'
)
VANISHING_BELOW = 0.1  # first/last gradient-norm ratio under which gradients "vanish"
FAR_RATIO = 1.2  # plain / residual distance from init beyond which the plain net is "farther"
SMALL_BRANCH = 0.5  # median ||F(x)|| / ||x|| under which residual branches are "small"


def _first_norm(ev: Evidence) -> str:
    return sorted(ev.study.norms, key=lambda n: n != 'batch')[0]


def _deepest_pair(ev: Evidence) -> tuple[int, RunData | None, RunData | None]:
    """(depth, plain run, residual run): the deepest depth with a finished plain and residual
    run with probe rows (first norm and seed), else the deepest finished plain run alone."""
    norm = _first_norm(ev)
    finished = [r for r in ev.first_seed_finished() if r.probe_rows()]
    pick = lambda depth, residual: next(  # noqa: E731
        (r for r in finished if r.spec.group == (depth, residual, norm)), None
    )
    for depth in reversed(ev.depths):
        if pick(depth, False) and pick(depth, True):
            return depth, pick(depth, False), pick(depth, True)
    for depth in reversed(ev.depths):
        if pick(depth, False):
            return depth, pick(depth, False), None
    return ev.depths[-1], None, None


def _last_probe(run: RunData) -> dict:
    probes = run.probe_rows()
    return probes[max(probes)] if probes else {}


def _median(row: dict, prefix: str) -> float | None:
    values = signals.profile(row, prefix)[1]
    return float(np.median(values)) if values else None


@finding('question_gradients', 2, 'Do gradients vanish?', FOLKLORE, question='Do gradients vanish?')
def question_gradients(ev: Evidence) -> Claim | str:
    """The first/last conv weight-gradient ratio at every probe step of the deepest nets."""
    depth, plain, resnet = _deepest_pair(ev)
    if plain is None:
        return f'a finished plain-{depth} with probe rows'
    nums, parts, vanishing = {}, [], []
    for run in (plain, resnet):
        if run is None:
            continue
        rows = run.probe_rows()
        ratios = {s: signals.first_last_ratio(r, 'grad_norm') for s, r in sorted(rows.items())}
        act = {s: signals.first_last_ratio(r, 'act_grad_norm') for s, r in sorted(rows.items())}
        low, high = min(ratios.values()), max(ratios.values())
        nums[run.spec.name] = {
            'grad_ratio_by_step': ratios,
            'act_grad_ratio_by_step': act,
            'min_grad_ratio': low,
        }
        if low < VANISHING_BELOW:
            vanishing.append(run.spec.label)
        parts.append(
            f'{run.spec.label}: first/last conv weight-gradient norm {times(ratios[min(ratios)])} '
            f'at init, between {times(low)} and {times(high)} over {len(ratios)} probes to step '
            f'{max(ratios)} (activation gradients, stem over last block: '
            f'{times(act[min(act)])} at init, {times(act[max(act)])} at the last probe)'
        )
    verdict = 'vanishing' if vanishing else 'no vanishing gradients'
    text = '; '.join(parts) + '. '
    text += (
        f'Gradients vanish in {", ".join(vanishing)}.'
        if vanishing
        else "No net's input-side gradient falls below 1/10 of its output-side one: the "
        "plain net's trouble is not vanishing gradients, contradicting the folklore"
        + (
            ' (they grow towards the input instead).'
            if nums[plain.spec.name]['min_grad_ratio'] > 1
            else '.'
        )
    )
    rule = (
        f'vanishing iff the first/last conv gradient-norm ratio is below {VANISHING_BELOW} at '
        'some probe step (training-mode BN, the probe batch)'
    )
    return Claim(text, rule, verdict, nums)


@finding('question_residual', 8, 'Why is the residual easier?', CLAIM_A,
         question='Why is the residual easier to learn (a)?')  # fmt: skip
def question_residual(ev: Evidence) -> Claim | str:
    """Branch ratio, block change and consecutive CKA at the last probe, deepest nets."""
    depth, plain, resnet = _deepest_pair(ev)
    if plain is None or resnet is None:
        return f'finished plain-{depth} and ResNet-{depth} runs with block probes'
    p, r = _last_probe(plain), _last_probe(resnet)
    nums = {
        'step': max(resnet.probe_rows()),
        'resnet_branch_ratio_median': _median(r, 'branch_ratio'),
        'resnet_branch_ratio_max': max(signals.profile(r, 'branch_ratio')[1], default=None),
        'plain_block_change_median': _median(p, 'block_change'),
        'resnet_block_change_median': _median(r, 'block_change'),
        'plain_cka_median': _median(p, 'cka'),
        'resnet_cka_median': _median(r, 'cka'),
    }
    if None in nums.values():
        return "block probes (branch_ratio/, block_change/, cka/) in the runs' metrics"
    small_branch = nums['resnet_branch_ratio_median'] < SMALL_BRANCH
    smaller_change = nums['resnet_block_change_median'] < nums['plain_block_change_median']
    more_alike = nums['resnet_cka_median'] > nums['plain_cka_median']
    nums.update(small_branch=small_branch, smaller_change=smaller_change, more_alike=more_alike)
    held = sum((small_branch, smaller_change, more_alike))
    verdict = {3: 'supports (a)', 0: 'contradicts (a)'}.get(held, 'partly supports (a)')
    text = (
        f'At the last probe (step {nums["step"]}, training-mode BN on the probe batch): '
        f"ResNet-{depth}'s residual branches are {times(nums['resnet_branch_ratio_median'])} the "
        f'size of their shortcut input (median over blocks; largest '
        f'{times(nums["resnet_branch_ratio_max"])}). A block changes its input by '
        f'{nums["resnet_block_change_median"]:.3g} (relative, median) in ResNet-{depth} and '
        f'{nums["plain_block_change_median"]:.3g} in plain-{depth}; linear CKA between '
        f'consecutive block outputs is {nums["resnet_cka_median"]:.3f} vs '
        f'{nums["plain_cka_median"]:.3f}. '
        + (
            'So the residual blocks do make small changes and the plain blocks larger ones.'
            if held == 3
            else f'{held} of the 3 conditions hold'
            + ('' if small_branch else ': the residual branches are not small')
            + '.'
        )
    )
    rule = (
        f"supports (a) iff the ResNet's median branch ratio is below {SMALL_BRANCH} (the branch "
        'at most half of what the shortcut carries), its median block change is below the plain '
        "net's, and its median consecutive CKA above the plain net's; contradicts (a) iff none "
        'holds; block change is not scale-invariant (a plain block re-normalises its output), '
        'CKA is'
    )
    return Claim(text, rule, verdict, nums)


def _constructed(ev: Evidence) -> tuple[RunData | None, RunData | None]:
    """(first finished constructed run, its source run)."""
    built = next((r for r in ev.runs if r.spec.source and r.state == 'finished'), None)
    if built is None:
        return None, None
    return built, next((r for r in ev.runs if r.spec.name == built.spec.source), None)


@finding('question_solver', 11, 'Does the solver fail to find an existing solution?', CLAIM_B,
         question='Does the solver fail to find a solution that exists (b)?')  # fmt: skip
def question_solver(ev: Evidence) -> Claim | str | None:
    """The constructed plain net against its source, the random-init plain net of its depth and
    the ResNet: training error, when it leaves the constructed solution, and how far."""
    if not ev.study.constructed:
        return None
    built, source = _constructed(ev)
    if built is None or source is None:
        return 'a finished constructed run (study.constructed) and its source run'
    margin = ev.study.degradation_margin
    depth = built.spec.depth
    n = lambda run, key: ev.numbers[run.spec.name][key]  # noqa: E731
    steps, acc = built.series('train/accuracy')
    err = 1 - acc
    e_src = n(source, 'final_train_error')
    left = [int(s) for s, e in zip(steps, err) if e > e_src + margin]
    added = added_blocks(_last_probe(built), source.spec.depth)
    drift = added_block_drift(built, source.spec.depth)
    peer = lambda residual: next(  # noqa: E731  (the random-init nets of the built one's depth)
        (
            r
            for r in ev.runs
            if r.state == 'finished'
            and r.spec.group == (depth, residual, built.spec.norm)
            and r.spec.seed == built.spec.seed
        ),
        None,
    )
    plain, resnet = peer(False), peer(True)
    nums = {
        'source': source.spec.name,
        'source_final_train_error': e_src,
        'built_first_train_error': float(err[0]),
        'built_max_train_error': float(err.max()),
        'built_final_train_error': n(built, 'final_train_error'),
        'built_final_test_error': n(built, 'final_test_error'),
        'first_step_above_source': left[0] if left else None,
        'random_init_final_train_error': n(plain, 'final_train_error') if plain else None,
        'resnet_final_train_error': n(resnet, 'final_train_error') if resnet else None,
        'added_blocks': added,
        'added_block_drift': drift,
        'margin': margin,
    }
    kept = not left
    ends_no_worse = nums['built_final_train_error'] <= e_src + margin
    r_err = nums['random_init_final_train_error']
    beats_random = r_err is not None and nums['built_final_train_error'] < r_err - margin
    text = (
        f'plain-{depth} built from {source.spec.label} (final training error {pct(e_src)}) '
        f'starts at {pct(nums["built_first_train_error"])} (first logged mean, training-mode '
        f'BN), '
    )
    if kept:
        text += "and SGD never takes it above the source's error (+ the margin); "
    else:
        text += (
            f"and SGD leaves the constructed solution: its training error exceeds the source's "
            f'by more than {pct(margin)} from step {left[0]} on, up to '
            f'{pct(nums["built_max_train_error"])}; '
        )
    if drift:
        last = drift[max(drift)]
        text += (
            f'its {len(added)} added blocks, identities at step 0, change their input by '
            f'{last["block_change_median"]:.3g} (median) at step {max(drift)}, and their layers '
            f'are {last["init_distance_median"]:.3g} (relative) away from the identity kernels; '
        )
    text += f'it ends at {pct(nums["built_final_train_error"])}'
    if r_err is not None:
        text += f', against {pct(r_err)} for plain-{depth} from random init'
    if nums['resnet_final_train_error'] is not None:
        text += f' and {pct(nums["resnet_final_train_error"])} for ResNet-{depth}'
    text += '. '
    if beats_random:
        text += (
            'A deeper plain net with a lower training error than the random-init one exists '
            'and is reachable by the same SGD from a good start: from random init the solver '
            'does not find it, as (b) says.'
        )
        verdict = 'supports (b)'
    else:
        text += (
            'The constructed start does not end better than random init, so these runs do not '
            'show a better solution that SGD from random init misses.'
        )
        verdict = 'does not support (b)'
    if not ends_no_worse:
        verdict += '; SGD leaves the constructed solution'
    nums.update(kept=kept, ends_no_worse=ends_no_worse, beats_random=beats_random)
    rule = (
        'supports (b) iff the constructed run ends with training error lower than the random-init '
        f'plain net of its depth by more than {pct(margin)}; "SGD leaves the constructed solution" '
        "iff it ends above the source's final training error by more than that margin"
    )
    return Claim(text, rule, verdict, nums)


@finding('question_places', 10, 'Are the two nets in different places?', CLAIM_C,
         question='Are the plain and the residual net in different places (c)?')  # fmt: skip
def question_places(ev: Evidence) -> Claim | str:
    """Distance from init, whole net and per layer, of the deepest plain and residual nets."""
    depth, plain, resnet = _deepest_pair(ev)
    if plain is None or resnet is None:
        return f'finished plain-{depth} and ResNet-{depth} runs with distance-from-init probes'
    p, r = _last_probe(plain), _last_probe(resnet)
    if 'init_distance/global' not in p or 'init_distance/global' not in r:
        return "init_distance/ probes in the runs' metrics"
    nums = {
        'step': max(resnet.probe_rows()),
        'plain_global': p['init_distance/global'],
        'resnet_global': r['init_distance/global'],
        'plain_layer_median': _median(p, 'init_distance'),
        'resnet_layer_median': _median(r, 'init_distance'),
    }
    ratio = nums['plain_global'] / nums['resnet_global']
    nums['plain_over_resnet'] = ratio
    verdict = (
        'supports (c)'
        if ratio > FAR_RATIO
        else 'contradicts (c)'
        if ratio < 1 / FAR_RATIO
        else 'undecided'
    )
    text = (
        f'At step {nums["step"]}, plain-{depth} is {nums["plain_global"]:.3g} (relative, all '
        f'parameters) from its init and ResNet-{depth} {nums["resnet_global"]:.3g}: the plain '
        f'net has moved {times(ratio)} as far (median layer {nums["plain_layer_median"]:.3g} vs '
        f'{nums["resnet_layer_median"]:.3g}). '
    )
    text += {
        'supports (c)': 'The plain net travels farther from where it started.',
        'contradicts (c)': 'The residual net travels farther: it does not start closer.',
        'undecided': 'The two travel about as far; distance from init cannot decide (c) here.',
    }[verdict]
    rule = (
        f'supports (c) iff the plain net moved more than {FAR_RATIO}x as far from its init '
        f'(||theta - theta_0|| / ||theta_0||, all parameters) as the ResNet; contradicts iff '
        f'less than 1/{FAR_RATIO}x; undecided between'
    )
    return Claim(text, rule, verdict, nums)
