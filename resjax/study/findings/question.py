"""The question's sub-questions, one finding each, answered in the report's first section
("What the question asks, and what the runs say"; figures 2, 8-11): do gradients vanish, why
is the residual easier (a), does the solver fail (b), are the nets in different places (c).
Each reads the deepest plain and residual nets of the first norm (BN first) and seed, or the
constructed runs.
"""

from __future__ import annotations

import numpy as np

from resjax.probes import signals
from resjax.study.findings import sweep
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


def _last_probe(run: RunData) -> dict:
    probes = run.probe_rows()
    return probes[max(probes)] if probes else {}


def _median(row: dict, prefix: str) -> float | None:
    values = signals.profile(row, prefix)[1]
    return float(np.median(values)) if values else None


GRADIENTS_RULE = (
    f'the gradients of a net vanish in a seed iff its first/last conv weight-gradient norm ratio '
    f'falls below {VANISHING_BELOW} at some probe step (training-mode BN, the probe batch). '
    "Supports the folklore iff the deepest plain net's gradients vanish in every seed and the "
    "ResNet's in none; contradicts it iff the plain net's vanish in no seed (there is nothing "
    "for the shortcut to fix) or the ResNet's vanish in every seed too (the shortcut does not "
    'fix it); undecided otherwise (the seeds disagree)'
)


@finding('question_gradients', 2, 'Do gradients vanish?', FOLKLORE, question='Do gradients vanish?')
def question_gradients(ev: Evidence) -> Claim | str:
    """The first/last conv weight-gradient ratio at every probe step of the deepest nets, per
    seed."""
    depth, pairs = deepest_pairs(ev)
    if not pairs:
        return f'a finished plain-{depth} with probe rows'
    nums: dict = {'seeds': [p.spec.seed for p, _ in pairs]}
    vanish: dict[str, list[bool]] = {}
    vanish_low: dict[str, list[float]] = {}
    parts = []
    for kind, runs in (('plain', [p for p, _ in pairs]), ('resnet', [r for _, r in pairs if r])):
        if not runs:
            continue
        lows, inits, acts = [], [], []
        for run in runs:
            rows = run.probe_rows()
            ratios = {s: signals.first_last_ratio(r, 'grad_norm') for s, r in sorted(rows.items())}
            act = {s: signals.first_last_ratio(r, 'act_grad_norm') for s, r in sorted(rows.items())}
            lows.append(min(ratios.values()))
            inits.append(ratios[min(ratios)])
            acts.append(act[max(act)])
            nums[run.spec.name] = {'grad_ratio_by_step': ratios, 'act_grad_ratio_by_step': act,
                                   'min_grad_ratio': min(ratios.values())}  # fmt: skip
        vanish[kind] = [low < VANISHING_BELOW for low in lows]
        vanish_low[kind] = lows
        low, init, act_last = seeds_of(lows), seeds_of(inits), seeds_of(acts)
        nums[f'{kind}_min_grad_ratio'] = low.json()
        parts.append(
            f'{runs[0].spec.label}: first/last conv weight-gradient norm {times(init.mean)} at '
            f'init (mean over seeds), lowest over the probes {low.show(times)}; activation '
            f'gradients, stem over last block, {act_last.show(times)} at the last probe'
        )
    plain_all, plain_none = all(vanish['plain']), not any(vanish['plain'])
    res = vanish.get('resnet')
    if plain_none or (res is not None and all(res)):
        verdict = 'contradicts the folklore'
    elif plain_all and res is not None and not any(res):
        verdict = 'supports the folklore'
    else:
        verdict = 'undecided'
    nums['vanishing'] = vanish
    text = '; '.join(parts) + '. '
    text += {
        'contradicts the folklore': (
            "The plain net's input-side gradient never falls below 1/10 of its output-side "
            'one: its trouble is not vanishing gradients'
            + (' (they grow towards the input instead)' if min(vanish_low['plain']) > 1 else '')
            + '.'
            if plain_none
            else "The ResNet's gradients vanish as well: the shortcut does not fix them."
        ),
        'supports the folklore': "The plain net's gradients vanish and the ResNet's do not.",
        'undecided': 'The seeds disagree, or a net is missing: the runs cannot decide.',
    }[verdict]
    return Claim(text, GRADIENTS_RULE, verdict + seed_note(seeds_of(vanish_low['plain'])), nums)


LESION_MARGIN = 0.01  # test error: a lesion difference (plain vs ResNet) that counts
DESCENT_MARGIN = 0.05  # cosine: a descent-cosine difference that counts
RESIDUAL_RULE = (
    'claim (a) predicts three things of the deepest trained nets, each tested against a '
    'control, a difference counting only beyond its margin and the seed-to-seed range: '
    f'(1) lesions: removing one stride-1 block (a ResNet branch; a plain block replaced by the '
    f'identity) raises the test error less in the ResNet than in the plain net (median over '
    f'blocks; margin {LESION_MARGIN:g}); the opposite order fails it; '
    f"(2) refinement: the median cosine between a ResNet block's change and the negative "
    "gradient at its input exceeds both the plain net's and its own at step 0 (margin "
    f'{DESCENT_MARGIN:g}); a plain net above the ResNet fails it; '
    f"(3) small learned branches: the ResNet's median branch ratio at the end is below "
    f'{SMALL_BRANCH:g} and not above its step-0 value; at or above {SMALL_BRANCH:g} and grown '
    'since step 0 fails it. Supports (a) iff every test that could be measured holds (at least '
    'two); contradicts (a) iff none holds and at least one fails; undecided otherwise'
)


def _lesion_increase(result: dict | None) -> float | None:
    """Median test-error increase over a lesion result's blocks that keep their shape (a
    ResNet's identity-shortcut branches, a plain net's identity replacements)."""
    if not result or not result.get('blocks'):
        return None
    base = result['test_error_intact']
    ups = [b['test_error'] - base for b in result['blocks'] if b['shortcut'] in ('identity', None)]
    return float(np.median(ups)) if ups else None


def _first_probe(run: RunData) -> dict:
    probes = run.probe_rows()
    return probes[min(probes)] if probes else {}


@finding('question_residual', 8, 'Why is the residual easier?', CLAIM_A,
         question='Why is the residual easier to learn (a)?')  # fmt: skip
def question_residual(ev: Evidence) -> Claim | str:
    """Lesions, descent cosines and branch ratios of the deepest pair against their controls
    (module docstring of `resjax.probes.blocks` for the probes' definitions)."""
    depth, pairs = deepest_pairs(ev)
    pairs = [(p, r) for p, r in pairs if r is not None]
    if not pairs:
        return f'finished plain-{depth} and ResNet-{depth} runs with block probes'
    last_r = [_last_probe(r) for _, r in pairs]
    if None in [_median(row, 'branch_ratio') for row in last_r]:
        return "block probes (branch_ratio/, descent_cos/) in the runs' metrics"
    med = lambda rows, prefix: seeds_of(_median(row, prefix) for row in rows)  # noqa: E731
    init_r, init_p = [_first_probe(r) for _, r in pairs], [_first_probe(p) for p, _ in pairs]
    last_p = [_last_probe(p) for p, _ in pairs]
    branch_end, branch_init = med(last_r, 'branch_ratio'), med(init_r, 'branch_ratio')
    cka = {k: med(rows, 'cka') for k, rows in
           (('resnet_end', last_r), ('resnet_init', init_r), ('plain_end', last_p),
            ('plain_init', init_p))}  # fmt: skip
    nums: dict = {
        'step': max(pairs[0][1].probe_rows()),
        'seeds': [p.spec.seed for p, _ in pairs],
        'resnet_branch_ratio_end': branch_end.json(),
        'resnet_branch_ratio_init': branch_init.json(),
        **{f'cka_{k}': v.json() for k, v in cka.items()},
    }
    tests: dict[str, int] = {}
    parts = []
    plain_label, res_label = pairs[0][0].spec.label, pairs[0][1].spec.label
    lesions = ev.inspection.get('lesion') or {}
    up_p, up_r = (_lesion_increase(lesions.get(label)) for label in (plain_label, res_label))
    if up_p is not None and up_r is not None:
        a, b = seeds_of([up_p]), seeds_of([up_r])  # Inspection covers the first seed.
        tests['lesion'] = gap(a, b, LESION_MARGIN)
        nums.update(lesion_increase_plain=up_p, lesion_increase_resnet=up_r)
        parts.append(
            f"(1) Lesions (control: the plain net's stride-1 blocks replaced by the identity; "
            f'first seed, BN eval mode): removing one block adds {pct(up_r)} test error to '
            f'{res_label} and {pct(up_p)} to {plain_label} (medians over blocks)'
        )
    if all(_median(row, 'descent_cos') is not None for row in last_r + last_p + init_r):
        d_end, d_init = med(last_r, 'descent_cos'), med(init_r, 'descent_cos')
        d_plain = med(last_p, 'descent_cos')
        g_plain, g_init = gap(d_end, d_plain, DESCENT_MARGIN), gap(d_end, d_init, DESCENT_MARGIN)
        tests['refinement'] = 1 if g_plain == g_init == 1 else -1 if g_plain == -1 else 0
        nums.update(descent_cos_resnet_end=d_end.json(), descent_cos_resnet_init=d_init.json(),
                    descent_cos_plain_end=d_plain.json())  # fmt: skip
        parts.append(
            f"(2) Refinement (controls: the same blocks at step 0, and the plain net's): the "
            f"median cosine between a block's change and the negative gradient at its input is "
            f'{d_end.show()} in {res_label} at step {nums["step"]}, {d_init.show()} at step 0, '
            f'and {d_plain.show()} in {plain_label}'
        )
    g_branch = gap(branch_end, branch_init)
    small = branch_end.mean < SMALL_BRANCH
    grew = g_branch == 1
    tests['small_branches'] = 1 if small and not grew else -1 if not small and grew else 0
    parts.append(
        f'(3) Branch size (control: the branches at step 0, where BatchNorm alone makes them '
        f"small, De & Smith 2020): {res_label}'s median ||F(x)|| / ||x|| is "
        f'{branch_end.show()} at the end and {branch_init.show()} at step 0'
    )
    parts.append(
        f'Consecutive-block linear CKA, descriptive (scale-invariant): {res_label} '
        f'{cka["resnet_end"].show()} (step 0: {cka["resnet_init"].show()}), {plain_label} '
        f'{cka["plain_end"].show()} (step 0: {cka["plain_init"].show()})'
    )
    held = [k for k, v in tests.items() if v == 1]
    failed = [k for k, v in tests.items() if v == -1]
    if len(tests) >= 2 and len(held) == len(tests):
        verdict = 'supports (a)'
    elif not held and failed:
        verdict = 'contradicts (a)'
    else:
        verdict = 'undecided'
    nums['tests'] = tests
    label = {1: 'holds', -1: 'fails', 0: 'within the spread or margin'}
    text = '. '.join(parts) + '. ' + '; '.join(f'{k}: {label[v]}' for k, v in tests.items())
    return Claim(text + '.', RESIDUAL_RULE, verdict + seed_note(branch_end), nums)


def _constructed(ev: Evidence) -> tuple[RunData | None, RunData | None]:
    """(first finished constructed run, its source run)."""
    built = next((r for r in ev.runs if r.spec.source and r.state == 'finished'), None)
    if built is None:
        return None, None
    return built, next((r for r in ev.runs if r.spec.name == built.spec.source), None)


@finding('question_solver', 11, 'Does the solver fail to find an existing solution?', CLAIM_B,
         question='Does the solver fail to find a solution that exists (b)?')  # fmt: skip
def question_solver(ev: Evidence) -> Claim | str | None:
    """With `study.constructed_lrs`, the controlled sweep (`sweep.solver_sweep`). Without it,
    the single constructed plain net against its source, the random-init plain net of its depth
    and the ResNet: training error, when it leaves the constructed solution, and how far; that
    run has no control, so it leaves (b) undecided."""
    if not ev.study.constructed:
        return None
    if ev.study.constructed_lrs:
        return sweep.solver_sweep(ev)
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
    total = source.spec.config.train.steps + built.spec.config.train.steps
    text += (
        'This single run is uncontrolled: its source is not restarted at the same lr, no ResNet '
        f'is built beside it, and it has {total} steps of training in all'
        + (f" against the random-init net's {plain.spec.config.train.steps}" if plain else '')
        + ', so it cannot decide (b); study.constructed_lrs runs the controlled sweep.'
    )
    verdict = 'undecided'
    if not ends_no_worse:
        verdict += '; SGD leaves the constructed solution'
    nums.update(kept=kept, ends_no_worse=ends_no_worse, beats_random=beats_random, total=total)
    rule = (
        "without study.constructed_lrs, undecided: one constructed run with the grid's recipe "
        'has no control (its source restarted at the same lr, a constructed ResNet, a random-init '
        'run of as many steps); "SGD leaves the constructed solution" iff it ends above the '
        f"source's final training error by more than {pct(margin)}"
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
