"""Findings 1-7: the papers' claims tested on the runs' metrics (figures 1-4) and on the
inspection library's numbers for the final nets (figures 5-7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from resjax.study.findings.base import Claim, Evidence, cap, finding, pct, times
from resjax.study.grid import norm_title

HE_DEGRADATION = (
    'He et al. 2015 (Sec. 4.1, Fig. 6): the deeper plain net has higher training error '
    'throughout training ("degradation"); the deeper ResNet has lower error.'
)
HE_HEALTHY = (
    'He et al. 2015 (Sec. 4.1): BN plain nets do not suffer from vanishing gradients; '
    'Yang et al. 2019 and Philipp et al. 2018: their gradients explode towards the input, '
    'growing with depth; shortcuts keep them near 1x.'
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
        if not any(b['shortcut'] for b in v['blocks']):
            return None  # A plain net's lesions are (a)'s control (question_residual).
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
