"""The constructed-solution sweep (`study.constructed_lrs`) read for claim (b): which nets keep
their start at each lr, and whether the built plain net ends below a random-init one given the
same total number of steps. `question.question_solver` returns `solver_sweep`'s claim when the
study has the sweep; figure 13 draws `sweep_runs`.

A sweep run's *start* is its source's final state: a restart is its source, and a built net
computes its source's function exactly in eval mode (`resjax.construct`). So the start's
training error is the source's final training error (the last logged row: the mean over its
last `train.log_every_steps` steps, training-mode BN) and its test error the source's final
test error (eval-mode BN); the loop evaluates after a step, never at step 0.
"""

from __future__ import annotations

import ml_collections

from resjax.study.config import parse_constructed
from resjax.study.findings.base import (
    Claim,
    Evidence,
    Seeds,
    gap,
    pct,
    seed_note,
    seeds_of,
    times,
)
from resjax.study.grid import SWEEP_NETS, norm_title, sweep_run_name
from resjax.study.numbers import RunData, run_numbers

KEEPS, LEAVES, UNCLEAR = 'keeps', 'leaves', 'unclear'
ZERO = Seeds((0.0,))
# Per-lr verdicts, in the rule's order.
DEPTH, ARTEFACT, KEPT, MIXED = (
    'unstable because of depth', 'a high-lr artefact', 'kept', 'mixed/undecided',
)  # fmt: skip

RULE = (
    "each sweep net restarts from its source's final state at a constant lr, fresh momentum, "
    "for study.constructed_steps steps; its start's training and test error are its source's "
    "final ones. Per seed, a net's rise = its final error (the last logged training row, "
    "training-mode BN; the final eval) minus its start's. Its spread = the rise's seed range "
    'or, for training errors, the sampling noise of two logged rows if larger, 2 sqrt(e1 (1 - '
    'e1) / n1 + e2 (1 - e2) / n2) (n = train.log_every_steps x train.batch_size examples a row; '
    'the largest over the seeds). It *leaves* its start iff the rise in training or test error '
    'exceeds the margin and its spread (or it diverged), *keeps* it iff each rise plus its '
    'spread is within the margin, else unclear. Per lr: "unstable because of depth" iff the '
    'built plain net leaves while the restarted plain source and the built ResNet keep theirs; '
    '"a high-lr artefact" iff the built plain net, the built ResNet and both restarted sources '
    'all leave; "kept" iff the built plain net keeps it; "mixed/undecided" otherwise. Claim (b) '
    'against the control, the random-init plain net of the built depth restarted for the same '
    'steps at the same lrs, each of the two at its own best lr of the sweep (lowest mean final '
    'training error): supports (b) iff the built net ends lower by more than the margin and the '
    "spread (the larger seed range, base.gap, or the two rows' sampling noise), contradicts (b) "
    'iff it is not lower by more than the margin even at the edge of that spread (difference + '
    'spread <= margin), undecided otherwise'
)


def _labels(shallow: int, deep: int) -> dict[str, str]:
    return {
        'built_plain': f'plain-{deep} built from plain-{shallow}',
        'built_resnet': f'ResNet-{deep} built from ResNet-{shallow}',
        'restart_plain': f'plain-{shallow} restarted',
        'restart_resnet': f'ResNet-{shallow} restarted',
        'restart_random': f'plain-{deep} (random init) restarted',
    }


def sweep_runs(
    study: ml_collections.ConfigDict, runs: list[RunData], seed: int | None = None
) -> list[dict]:
    """The sweep of the first `study.constructed` entry, first norm (BN first) and `seed`
    (default: the lowest of the sweep's), per lr in `study.constructed_lrs` order:
    {'lr', 'shallow', 'deep', 'nets': {role: {'label', 'run', 'source', 'start_train_error',
    'start_test_error'}}} for the roles of `grid.SWEEP_NETS` whose run and source are listed.
    The start errors are the source's final ones (module docstring), None if it has none."""
    sweep = [r for r in runs if r.spec.lr is not None]
    if not sweep or not study.constructed:
        return []
    norm = sorted({r.spec.norm for r in sweep}, key=lambda n: n != 'batch')[0]
    seed = min(r.spec.seed for r in sweep if r.spec.norm == norm) if seed is None else seed
    shallow, deep = parse_constructed(study.constructed[0])
    by_name = {r.spec.name: r for r in runs}
    labels = _labels(shallow, deep)
    out = []
    for lr in study.constructed_lrs:
        nets = {}
        for role, *_ in SWEEP_NETS:
            run = by_name.get(sweep_run_name(role, shallow, deep, norm, seed, lr))
            source = by_name.get(run.spec.source) if run else None
            if run is None or source is None:
                continue
            start = run_numbers(source)
            nets[role] = {
                'label': labels[role],
                'run': run,
                'source': source,
                'start_train_error': start['final_train_error'],
                'start_test_error': start['final_test_error'],
            }
        out.append({'lr': float(lr), 'shallow': shallow, 'deep': deep, 'nets': nets})
    return out


def _rise(d: Seeds, margin: float, noise: float = 0.0) -> int:
    """+1 if the rise d exceeds the margin, its seed range and the sampling `noise`
    (`base.gap` against 0); -1 if d plus the larger of its seed range and the noise is within
    the margin; 0 otherwise."""
    if gap(d, ZERO, max(margin, noise)) == 1:
        return 1
    return -1 if d.mean + max(d.range, noise) <= margin else 0


def row_examples(run: RunData) -> int:
    """The training examples behind one logged `train/accuracy` row of `run`: a full row's
    `train.log_every_steps` x `train.batch_size` (a run's last row may average fewer steps)."""
    return run.spec.config.train.log_every_steps * run.spec.config.train.batch_size


def row_noise(e1: float, n1: int, e2: float, n2: int) -> float:
    """Twice the binomial standard error of the difference of two error rates measured on
    n1 and n2 independent examples: what two logged training rows differ by from sampling."""
    return 2 * (e1 * (1 - e1) / n1 + e2 * (1 - e2) / n2) ** 0.5


def _net(per_seed: list[dict], margin: float) -> dict:
    """A net's numbers at one lr over the seeds and whether it keeps its start."""
    out: dict = {'seeds': per_seed}
    if any(p['diverged'] for p in per_seed):
        out['state'] = LEAVES
        out['diverged'] = True
        return out
    up_train = seeds_of(p['final_train_error'] - p['start_train_error'] for p in per_seed)
    up_test = seeds_of(p['final_test_error'] - p['start_test_error'] for p in per_seed)
    noise = max(p['train_noise'] for p in per_seed)
    rises = (_rise(up_train, margin, noise), _rise(up_test, margin))
    out.update(
        diverged=False,
        train_noise=noise,
        rise_train=up_train.json(),
        rise_test=up_test.json(),
        start_train=seeds_of(p['start_train_error'] for p in per_seed).json(),
        start_test=seeds_of(p['start_test_error'] for p in per_seed).json(),
        final_train=seeds_of(p['final_train_error'] for p in per_seed).json(),
        final_test=seeds_of(p['final_test_error'] for p in per_seed).json(),
        worst_train=seeds_of(p['worst_train_error'] for p in per_seed).json(),
        state=LEAVES if 1 in rises else KEEPS if rises == (-1, -1) else UNCLEAR,
    )
    ratios = [p['sharpness_ratio'] for p in per_seed if p['sharpness_ratio'] is not None]
    out['sharpness_ratio'] = seeds_of(ratios).json() if ratios else None
    return out


def _per_seed(ev: Evidence, net: dict) -> dict:
    run = net['run']
    n = ev.numbers[run.spec.name]
    _, acc = run.series('train/accuracy')
    steps, lam = run.series('hessian/lambda_max')
    lam0 = float(lam[0]) if len(lam) and steps[0] == 0 else None
    start, end = net['start_train_error'], n['final_train_error']
    noise = None
    if start is not None and end is not None:
        noise = row_noise(start, row_examples(net['source']), end, row_examples(run))
    return {
        'run': run.spec.name,
        'diverged': run.state == 'diverged',
        'start_train_error': net['start_train_error'],
        'start_test_error': net['start_test_error'],
        'final_train_error': n['final_train_error'],
        'final_test_error': n['final_test_error'],
        'worst_train_error': float(max(1 - acc)) if len(acc) else None,
        'lambda_max_step0': lam0,
        'two_over_lr': 2 / run.spec.lr,
        'sharpness_ratio': lam0 / (2 / run.spec.lr) if lam0 is not None else None,
        'row_examples': row_examples(run),
        'train_noise': noise,
    }


# The nets the per-lr verdict reads (the random-init restart is claim (b)'s control).
SWEEP_NETS_CORE = ('built_plain', 'built_resnet', 'restart_plain', 'restart_resnet')


def _lr_verdict(states: dict[str, str]) -> str:
    bp, br, rp, rr = (states[k] for k in SWEEP_NETS_CORE)
    if bp == LEAVES and rp == KEEPS and br == KEEPS:
        return DEPTH
    if bp == br == rp == rr == LEAVES:
        return ARTEFACT
    return KEPT if bp == KEEPS else MIXED


def _show_net(label: str, net: dict) -> str:
    if net.get('diverged'):
        return f'{label} diverged'
    s = lambda key: Seeds(tuple(net[key]['values'])).show(pct)  # noqa: E731
    text = (
        f'{label} {s("start_train")} -> {s("final_train")} train (worst logged '
        f'{s("worst_train")}), {s("start_test")} -> {s("final_test")} test: {net["state"]}'
    )
    if net['sharpness_ratio'] is not None:
        ratio = Seeds(tuple(net['sharpness_ratio']['values']))
        text += f', lambda_max(0) = {ratio.show(times)} 2/lr'
    return text


def solver_sweep(ev: Evidence) -> Claim | str:
    """Claim (b) from the sweep (module docstring, `RULE`), or a string naming what is
    missing."""
    margin = ev.study.degradation_margin
    first = sweep_runs(ev.study, ev.runs)
    if not first:
        return 'the sweep runs of study.constructed_lrs'
    shallow, deep = first[0]['shallow'], first[0]['deep']
    norm = next(iter(first[0]['nets'].values()))['run'].spec.norm if first[0]['nets'] else ''
    seeds = sorted({r.spec.seed for r in ev.runs if r.spec.lr is not None and r.spec.norm == norm})
    by_seed = {s: sweep_runs(ev.study, ev.runs, s) for s in seeds}
    missing = sorted(
        net['run'].spec.name if net['run'].state != 'finished' else net['source'].spec.name
        for panels in by_seed.values()
        for panel in panels
        for net in panel['nets'].values()
        if net['run'].state not in ('finished', 'diverged') or net['source'].state != 'finished'
    )
    wanted = len(seeds) * len(ev.study.constructed_lrs) * len(SWEEP_NETS)
    got = sum(len(p['nets']) for panels in by_seed.values() for p in panels)
    if missing or got < wanted:
        shown = ', '.join(missing[:3]) or 'some sweep runs'
        return f'the finished sweep runs and their sources ({shown} not finished)'
    labels = _labels(shallow, deep)
    lrs, parts, nums = [], [], {'margin': margin, 'seeds': seeds, 'norm': norm, 'lrs': []}
    for i, lr in enumerate(ev.study.constructed_lrs):
        nets = {
            role: _net([_per_seed(ev, by_seed[s][i]['nets'][role]) for s in seeds], margin)
            for role, *_ in SWEEP_NETS
        }
        verdict = _lr_verdict({k: v['state'] for k, v in nets.items()})
        lrs.append((float(lr), verdict, nets))
        nums['lrs'].append({'lr': float(lr), 'verdict': verdict, 'nets': nets})
        shown = '; '.join(_show_net(labels[k], v) for k, v in nets.items())
        noise = max((v['train_noise'] for v in nets.values() if 'train_noise' in v), default=0)
        shown += f' (two training rows differ by up to {pct(noise)} from sampling alone)'
        parts.append(f'At lr {lr:g} (2/lr = {2 / lr:.3g}): {shown}. So at lr {lr:g}: {verdict}.')
    # Claim (b): the built net against the random-init one, each at its best lr.
    best = {}
    for role in ('built_plain', 'restart_random'):
        options = [(Seeds(tuple(n[role]['final_train']['values'])), lr, n[role]['seeds'])
                   for lr, _, n in lrs if not n[role].get('diverged')]  # fmt: skip
        best[role] = min(options, key=lambda o: o[0].mean) if options else None
    source = first[0]['nets']['built_plain']['source'].spec
    random = first[0]['nets']['restart_random']['source'].spec
    steps = ev.study.constructed_steps
    totals = {
        'built': source.config.train.steps + steps,
        'random_init': random.config.train.steps + steps,
    }
    nums['total_steps'] = totals
    same = totals['built'] == totals['random_init']
    text = (
        f'The sweep: {steps} steps at each constant lr, no warm-up, fresh momentum, from the '
        f"trained {norm_title(norm)} nets of seed(s) {seeds}. Each net's training error "
        '(train: the last logged row, training-mode BN) and test error go from its start (its '
        "source's final ones) to its end. The controls: each source restarted at the same lr, "
        f'and ResNet-{deep} built from ResNet-{shallow}. ' + ' '.join(parts)
    )
    kept = [f'{lr:g}' for lr, v, _ in lrs if v == KEPT]
    text += (
        f' By the rule the built plain-{deep} keeps its start at lr {", ".join(kept)}.'
        if kept
        else f' At no lr of the sweep is the built plain-{deep} shown to keep its start.'
    )
    if best['built_plain'] is None or best['restart_random'] is None:
        verdict = 'undecided'
        text += ' One of the two nets diverged at every lr: (b) is not decided here.'
        return _claim(text, verdict, nums)
    (b, b_lr, b_seeds), (r, r_lr, r_seeds) = best['built_plain'], best['restart_random']
    spread = max(b.range, r.range)
    d = r.mean - b.mean
    noise = max(
        row_noise(x['final_train_error'], x['row_examples'], y['final_train_error'],
                  y['row_examples'])
        for x, y in zip(b_seeds, r_seeds)
    )  # fmt: skip
    nums['claim_b'] = {
        'built_best_lr': b_lr,
        'built_final_train_error': b.json(),
        'random_init_best_lr': r_lr,
        'random_init_final_train_error': r.json(),
        'difference': d,
        'spread': spread,
        'noise': noise,
    }
    text += (
        f' Against the control, plain-{deep} from random init restarted at the same lrs (in '
        f'all {totals["random_init"]} steps of training: {totals["random_init"] - steps} in the '
        f'grid plus {steps}; the built net {totals["built"]}: {totals["built"] - steps} of its '
        f'source plus {steps}'
        + ('' if same else '; not the same total: the grid trains the two depths differently')
        + f'): at its best lr ({r_lr:g}) it ends at {r.show(pct)} training error, the built '
        f'plain-{deep} at its best lr ({b_lr:g}) at {b.show(pct)}. '
    )
    if gap(r, b, max(margin, noise)) == 1:
        verdict = 'supports (b)'
        text += (
            f'A plain-{deep} with lower training error exists, and SGD from random init does '
            'not reach it in the same number of steps at any lr of the sweep, as (b) says.'
        )
    elif d + max(spread, noise) <= margin:
        verdict = 'contradicts (b)'
        text += (
            'The constructed start gives no lower training error than random init with the '
            'same steps: these runs show no better solution that the solver misses.'
        )
    else:
        verdict = 'undecided'
        text += (
            f"The difference is within the seed spread or the rows' sampling noise "
            f'({pct(noise)}): (b) is not decided here.'
        )
    verdict += seed_note(b, r)
    return _claim(text, verdict, nums)


def _claim(text: str, verdict: str, nums: dict) -> Claim:
    rule = f'{RULE}; the margin is study.degradation_margin = {pct(nums["margin"])}'
    return Claim(text, rule, verdict, nums, figure=13)
