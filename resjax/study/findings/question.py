"""The question's sub-questions, one finding each, answered in the report's first section
("What the question asks, and what the runs say"; figures 2, 8-11): do gradients vanish, why
is the residual easier (a), does the solver fail (b), are the nets in different places (c).
Each reads the deepest plain and residual nets of the first norm (BN first) and seed, or the
constructed runs.
"""

from __future__ import annotations

import numpy as np

from resjax.probes import signals
from resjax.study.findings.base import (
    Claim,
    Evidence,
    Seeds,
    finding,
    gap,
    pct,
    seed_note,
    seeds_of,
    times,
)
from resjax.study.numbers import RunData, added_block_drift, added_blocks

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
SMALL_BRANCH = 0.5  # median ||F(x)|| / ||x|| under which residual branches are "small"


def _first_norm(ev: Evidence) -> str:
    return sorted(ev.study.norms, key=lambda n: n != 'batch')[0]


def deepest_pairs(ev: Evidence) -> tuple[int, list[tuple[RunData, RunData | None]]]:
    """(depth, [(plain run, residual run) per seed]): the deepest depth at which the first
    seed has a finished plain and residual run with probe rows (first norm), and that pair for
    every seed that has both; else the deepest finished plain runs alone, residual None.
    Findings compute their number per seed and compare the seeds' values (`base.gap`)."""
    norm = _first_norm(ev)
    finished = [r for r in ev.runs if r.state == 'finished' and r.probe_rows()]
    pick = lambda depth, residual, seed: next(  # noqa: E731
        (r for r in finished if r.spec.group == (depth, residual, norm) and r.spec.seed == seed),
        None,
    )
    seeds = ev.seeds
    if not seeds:
        return ev.depths[-1], []
    for depth in reversed(ev.depths):
        if pick(depth, False, seeds[0]) and pick(depth, True, seeds[0]):
            pairs = [(pick(depth, False, s), pick(depth, True, s)) for s in seeds]
            return depth, [(p, r) for p, r in pairs if p and r]
    for depth in reversed(ev.depths):
        if pick(depth, False, seeds[0]):
            return depth, [(pick(depth, False, s), None) for s in seeds if pick(depth, False, s)]
    return ev.depths[-1], []


def _deepest_pair(ev: Evidence) -> tuple[int, RunData | None, RunData | None]:
    """The first seed's pair of `deepest_pairs` (None, None if there is none)."""
    depth, pairs = deepest_pairs(ev)
    return (depth, *pairs[0]) if pairs else (depth, None, None)


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


# Nats by which a loss barrier counts: one path's above another's, or a path not barrier-free
# (about 4% of ln 10, the chance-level loss of 10 classes).
BARRIER_MARGIN = 0.1


def _barrier_lines(ev: Evidence) -> tuple[int, list[tuple[dict, dict, RunData, RunData]]]:
    """(depth, [(plain's figure-14 numbers, ResNet's, plain run, ResNet run) per seed]) for
    the seeds of `deepest_pairs` whose two runs both have barrier numbers."""
    depth, pairs = deepest_pairs(ev)
    drawn = (ev.inspection.get('barriers') or {}).get('runs', {})
    return depth, [
        (drawn[p.spec.name], drawn[r.spec.name], p, r)
        for p, r in pairs
        if r is not None and p.spec.name in drawn and r.spec.name in drawn
    ]


def _last_with(run: RunData, key: str) -> tuple[int, float] | None:
    """(step, value) of the last metrics row of `run` that has `key`, or None."""
    rows = [r for r in run.rows if key in r]
    return (int(rows[-1]['step']), float(rows[-1][key])) if rows else None


@finding('question_places', 14, 'Are the two nets in different places?', CLAIM_C,
         question='Are the plain and the residual net in different places (c)?')  # fmt: skip
def question_places(ev: Evidence) -> Claim | str:
    """Loss barriers (figure 14) of the deepest plain and residual nets: init -> final with BN
    statistics recomputed at every point, and between each run and its LMC partner; the
    distance and per-filter angle from init beside them, descriptive only."""
    depth, lines = _barrier_lines(ev)
    if not lines:
        return (
            f'figure 14 (study.inspect.figures with barriers) for finished plain-{depth} and '
            f'ResNet-{depth} runs'
        )
    settings = ev.inspection['barriers'].get('settings', {})
    per = lambda i, line, key: seeds_of(  # noqa: E731  (one number over the seeds)
        x[i][line][key] if x[i][line] else None for x in lines
    )
    bp, br = per(0, 'init', 'max_bump_over_chord'), per(1, 'init', 'max_bump_over_chord')
    ep, er = per(0, 'init', 'error_barrier'), per(1, 'init', 'error_barrier')
    side = gap(bp, br, BARRIER_MARGIN)
    barrier_free = max(bp.values + br.values) <= BARRIER_MARGIN
    nums = {
        'depth': depth,
        'seeds': [x[2].spec.seed for x in lines],
        'margin_nats': BARRIER_MARGIN,
        'examples': settings.get('examples'),
        'bn_examples': settings.get('bn_examples'),
        'plain_init_loss_barrier': bp.json(),
        'resnet_init_loss_barrier': br.json(),
        'plain_init_error_barrier': ep.json(),
        'resnet_init_error_barrier': er.json(),
    }
    text = (
        f'Loss barrier on the straight line from init to the final weights (max over alpha of '
        f'the loss minus the chord between the end points; mean cross-entropy over the first '
        f'{settings.get("examples")} training examples, BN eval mode with the statistics '
        f'recomputed on the first {settings.get("bn_examples")} training examples at each '
        f'point): plain-{depth} {bp.show()} nats, ResNet-{depth} {br.show()} nats (the '
        f'control: the ResNet of the same depth, norm, recipe and seed); error barriers '
        f'{ep.show(pct)} vs {er.show(pct)}. '
    )
    lmc = [x for x in lines if x[0]['lmc'] and x[1]['lmc']]
    if lmc:
        lp = seeds_of(x[0]['lmc']['max_bump_over_chord'] for x in lmc)
        lr = seeds_of(x[1]['lmc']['max_bump_over_chord'] for x in lmc)
        connected = [
            name
            for name, b in ((f'plain-{depth}', lp), (f'ResNet-{depth}', lr))
            if max(b.values) <= BARRIER_MARGIN
        ]
        nums.update(
            plain_lmc_loss_barrier=lp.json(),
            resnet_lmc_loss_barrier=lr.json(),
            lmc_connected=connected,
        )
        text += (
            f'Between each run and its LMC partner (same init, another data order; Frankle et '
            f'al. 2020) the loss barrier is {lp.show()} nats for plain-{depth} and {lr.show()} '
            f'for ResNet-{depth}: two SGD runs from one init end in one linearly connected '
            f'basin (barrier at most {BARRIER_MARGIN} nats at every seed) for '
            f'{" and ".join(connected) or "neither net"}. '
        )
    else:
        text += 'No LMC partners (study.lmc is off): linear mode connectivity not measured. '
    for name, i in (('plain', 2), ('resnet', 3)):
        for key in ('init_distance', 'init_angle'):
            values = [(_last_with(x[i], f'{key}/global') or (None, None))[1] for x in lines]
            if any(v is not None for v in values):
                nums[f'{name}_{key}'] = seeds_of(values).json()
    if 'plain_init_distance' in nums and 'resnet_init_distance' in nums:
        dp, dr = (Seeds(tuple(nums[f'{k}_init_distance']['values'])) for k in ('plain', 'resnet'))
        text += (
            f'Distance from init (||theta - theta_0|| / ||theta_0||, all parameters, last '
            f'probe): plain-{depth} {dp.show()}, ResNet-{depth} {dr.show()}'
        )
        if 'plain_init_angle' in nums and 'resnet_init_angle' in nums:
            ap, ar = (Seeds(tuple(nums[f'{k}_init_angle']['values'])) for k in ('plain', 'resnet'))
            text += f'; per-filter angle from init {ap.show()} vs {ar.show()} degrees'
        text += (
            ". Descriptive only: under BN a conv kernel's norm is not identifiable "
            '(BN(cW * x) = BN(W * x)), so the raw distance is mostly weight-norm growth, and '
            'neither distance nor angle says whether a barrier separates the two points. '
        )
    if side > 0:
        verdict = 'supports (c)'
        text += (
            f"The plain net's line from its init rises over its chord by more than the ResNet's "
            f'(beyond {BARRIER_MARGIN} nats and the seed spread): it settles in a basin its init '
            'is not linearly connected to, the ResNet nearer its start.'
        )
    elif side < 0:
        verdict = 'contradicts (c)'
        text += "The ResNet's line from its init has the larger barrier: it does not start closer."
    elif barrier_free:
        verdict = 'contradicts (c)'
        text += (
            f'Neither line rises more than {BARRIER_MARGIN} nats over its chord: both nets end '
            "in their init's linearly connected basin, not in different places."
        )
    else:
        verdict = 'undecided'
        text += (
            f'The two barriers differ by no more than {BARRIER_MARGIN} nats or the seed spread, '
            'and not both are barrier-free: the barriers cannot decide (c) here.'
        )
    verdict += seed_note(bp, br)
    rule = (
        "supports (c) iff the plain net's init -> final loss barrier (BN statistics recomputed "
        f"at each point, probe examples) exceeds the ResNet's by more than {BARRIER_MARGIN} "
        "nats and by more than the seed spread; contradicts (c) iff the ResNet's is the larger "
        f"by as much, or both nets' barriers are at most {BARRIER_MARGIN} nats at every seed "
        "(both stay in their init's basin); undecided otherwise; LMC barriers and the distance "
        'and angle from init are reported beside it, not used'
    )
    return Claim(text, rule, verdict, nums)
