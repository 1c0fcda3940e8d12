"""Can a block learn the identity? A regression experiment on real feature maps (issue 25).

The inputs x are the activations entering one stage of a net (`features`): a trained run's
(`source`, a workdir) or, without one, a freshly initialised net of the config's model. Stacks
of 1, 3, 9 shape-keeping blocks of resjax's own `BasicBlock` (stride 1, BN, post-activation)
are trained from He init to fit, on those x:

- (i) 'identity': y = x;
- (ii) 'near_identity': y = x + delta(x), delta a fixed random plain block scaled so that
  ||delta(x)|| = `delta` ||x|| over the training features;
- (iii) 'random': y = r(x), r another fixed random plain block scaled so that ||y|| = ||x||:
  a map a single plain block represents exactly, but not one near the identity.

Stacks (`STACKS`): 'plain' and 'residual' (He init); the controls 'plain_dirac' (plain blocks
started at the identity as `resjax.construct` builds identity blocks: Dirac kernels, BN set to
pass its input through) and the linear variants 'linear_plain' and 'linear_residual' (two convs
per block, biases, no BN, no ReLU; fan-in variance 1, the linear analogue of He init), where
Hardt & Ma (2017) prove that a residual parametrisation has no spurious optimum.

Training: SGD with momentum 0.9 at each constant lr of `lrs`, mean squared error over every
element, BN in training mode; every (seed, target, lr) of one stack and depth trains in one
vmapped step, all from that seed's init. Measured every `eval_every` steps, BN in eval mode:
the relative error sum((f(x) - y)^2) / sum(y^2) on the training features (the fit) and on
held-out test features. For plain stacks, the off-Dirac fraction of each 3x3 kernel W (HWIO):
1 - sum_o W[1, 1, o, o]^2 / sum W^2, 0 for a Dirac kernel up to a per-channel scale (which BN
makes irrelevant), ~1 - 1/(9 C) for a random one; the stack's mean over its convs.

What each answer to "why is the residual easier to learn?" predicts (`PREDICTIONS`), stated
before any number; `verdict` applies the rule for the first (`RULE`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import logging  # noqa: E402

from resjax import construct, data, models, runs  # noqa: E402
from resjax.models import resnet  # noqa: E402
from resjax.study.findings.base import gap, seeds_of  # noqa: E402

PyTree = Any
TARGETS = ('identity', 'near_identity', 'random')
STACKS = ('plain', 'residual', 'plain_dirac', 'linear_plain', 'linear_residual')
MOMENTUM = 0.9
# A plain stack "fails" where its error exceeds the residual stack's by more than this many
# decades (beyond the seed spread): the "plain >> residual" of the identity-as-zero prediction.
DECADES = 1.0

PREDICTIONS = {
    'identity-as-zero: the identity is the zero of the parametrisation': (
        'plain error >> residual error on (i) and (ii), growing with depth, but not on (iii); '
        'plain_dirac (plain blocks started at the identity) fits (i) at once but, like plain, '
        'struggles on (ii) if what is hard is leaving the identity by a small step'
    ),
    'starting point: what matters is starting at the identity': (
        'plain_dirac fits (i) and (ii) as well as the residual stack; plain from He init does not'
    ),
    'short paths: the shortcut makes an ensemble of shallow paths': (
        'no plain/residual difference that the other two answers explain: a gap on every target, '
        '(iii) included, growing with depth'
    ),
    'linear control (Hardt & Ma 2017)': (
        'linear_residual fits (i) and (ii) (the identity is its zero and it has no spurious '
        'optimum); a gap that shows with BN and ReLU but not here is due to the nonlinearity'
    ),
}
RULE = (
    "the identity-as-zero prediction holds if, at the deepest stack and each stack's best lr, "
    "the plain stack's relative error on the training features exceeds the residual stack's "
    f'by more than {DECADES:g} decade (log10, beyond the seed spread) on (i) and on (ii), and '
    'not on (iii); it fails if on (i) or (ii) the excess falls short of that (beyond the '
    'spread), or if it exceeds it on (iii) too (plain stacks are then harder to train whatever '
    'the target, not harder at the identity); otherwise undecided'
)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line, naming the key and what to use) for settings the
    experiment cannot run: unknown targets or stacks, empty or non-positive sizes and lrs."""
    c = config.identity
    for key, allowed in (('targets', TARGETS), ('stacks', STACKS)):
        bad = [v for v in c[key] if v not in allowed]
        if bad or not c[key]:
            raise ValueError(f'identity.{key}={tuple(c[key])!r}: use some of {allowed}')
    for key in ('depths', 'lrs', 'seeds'):
        if not c[key]:
            raise ValueError(f'identity.{key} is empty: give at least one value')
    if any(d < 1 for d in c.depths) or any(lr <= 0 for lr in c.lrs):
        raise ValueError('identity.depths and identity.lrs must be positive')
    for key in ('stage', 'steps', 'batch', 'eval_every', 'examples', 'eval_examples'):
        if c[key] < 1:
            raise ValueError(f'identity.{key}={c[key]} must be at least 1')
    if c.batch > c.examples:
        raise ValueError(f'identity.batch={c.batch} exceeds identity.examples={c.examples}')
    if not 0 < c.delta:
        raise ValueError(f'identity.delta={c.delta} must be positive')


class LinearBlock(nn.Module):
    """Two 3x3 convolutions with biases, no BN, no ReLU; with `residual`, x + F(x)."""

    residual: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
        y = x
        for i in (1, 2):
            y = nn.Conv(x.shape[-1], (3, 3), padding=((1, 1),) * 2, kernel_init=init,
                        name=f'conv{i}')(y)  # fmt: skip
        return x + y if self.residual else y


class Stack(nn.Module):
    """`depth` shape-keeping blocks ('block1', ...) of one `STACKS` kind."""

    kind: str
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(1, self.depth + 1):
            if self.kind.startswith('linear'):
                x = LinearBlock(self.kind == 'linear_residual', name=f'block{i}')(x, train)
            else:
                x = resnet.BasicBlock(
                    x.shape[-1], residual=self.kind == 'residual', name=f'block{i}'
                )(x, train)
        return x


def _block_spec(name: str, channels: int) -> models.BlockSpec:
    """The layout record of a plain `Stack` block, for `construct.identity_block`."""
    return models.BlockSpec(
        name=name, stage=1, index=int(name[5:]), stride=1, channels_in=channels,
        channels_out=channels, residual=False, shortcut=None,
        layers=(f'{name}/conv1', f'{name}/conv2'),
        norms=(f'{name}/norm1/bn', f'{name}/norm2/bn'),
    )  # fmt: skip


def _kept(variables: PyTree) -> dict:
    """The 'params' and 'batch_stats' of `init`'s variables: not the probes' 'perturbations'
    (`resjax.probes.signals`), whose shapes are those of the init batch."""
    return {
        k: flax.core.unfreeze(v) for k, v in variables.items() if k in ('params', 'batch_stats')
    }


def init_stack(kind: str, depth: int, x: np.ndarray, seed: int) -> PyTree:
    """The step-0 variables {'params'[, 'batch_stats']} of a stack for inputs like `x` (NHWC,
    float32). 'plain_dirac': every block the identity for x's per-channel mean and variance
    (exact in eval mode; x >= 0, a ReLU's output)."""
    base = 'plain' if kind == 'plain_dirac' else kind
    variables = _kept(
        Stack(base, depth).init(jax.random.key(seed), jnp.asarray(x[:2]), train=False)
    )
    if kind == 'plain_dirac':
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        mean = jnp.asarray(flat.mean(0), jnp.float32)
        var = jnp.asarray(flat.var(0), jnp.float32)
        for i in range(1, depth + 1):
            spec = _block_spec(f'block{i}', x.shape[-1])
            variables['params'], variables['batch_stats'] = construct.identity_block(
                spec, variables['params'], variables['batch_stats'], mean, var
            )
    return variables


def off_dirac(params: PyTree) -> jax.Array:
    """Mean over the 3x3 kernels (HWIO, as many channels in as out; any leading axes, e.g.
    vmapped runs, are kept) of 1 - sum_o W[1, 1, o, o]^2 / sum W^2: 0 for a Dirac kernel up to
    a per-channel scale."""
    fractions = []
    for path, w in flax.traverse_util.flatten_dict(params, sep='/').items():
        if path.endswith('kernel') and w.shape[-4:-2] == (3, 3) and w.shape[-2] == w.shape[-1]:
            centre = jnp.diagonal(w[..., 1, 1, :, :], axis1=-2, axis2=-1)
            fractions.append(1 - jnp.sum(centre**2, -1) / jnp.sum(w**2, axis=(-4, -3, -2, -1)))
    return jnp.mean(jnp.stack(fractions), 0)


def targets(x: np.ndarray, x_test: np.ndarray, delta: float, seed: int) -> dict:
    """{target: (y for x, y for x_test)} for `TARGETS`: the fixed random blocks are plain
    `BasicBlock`s of He init in eval mode, drawn from `seed`, scaled on the training x."""

    def block(key: int):
        net = Stack('plain', 1)
        v = _kept(net.init(jax.random.key(key), jnp.asarray(x[:2]), train=False))
        return jax.jit(lambda z: net.apply(v, z, train=False))

    def norm(a):
        return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))

    d, r = block(seed + 10_000), block(seed + 20_000)
    dx, dt = np.asarray(d(x)), np.asarray(d(x_test))
    rx, rt = np.asarray(r(x)), np.asarray(r(x_test))
    c_d, c_r = delta * norm(x) / norm(dx), norm(x) / norm(rx)
    return {
        'identity': (x, x_test),
        'near_identity': (x + c_d * dx, x_test + c_d * dt),
        'random': (c_r * rx, c_r * rt),
    }


def _relative_error(apply, variables, x, y, which, batch: int) -> jax.Array:
    """sum((f(x) - y)^2) / sum(y^2) over every example, per vmapped combination; `y` holds one
    array per target (a leading axis) and `which` each combination's target index."""
    err = 0.0
    for s in range(0, len(x), batch):
        f = apply(variables, x[s : s + batch])
        err = err + jnp.sum(jnp.square(f - y[:, s : s + batch][which]), axis=(1, 2, 3, 4))
    return err / jnp.sum(jnp.square(y), axis=(1, 2, 3, 4))[which]


def train_stack(
    kind: str,
    depth: int,
    x: np.ndarray,
    x_test: np.ndarray,
    ys: dict,
    lrs: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    batch: int,
    eval_every: int,
) -> dict:
    """Trains every (seed, target, lr) of one stack kind and depth at once (vmapped) and returns
    {'steps': [...], 'runs': [{'seed', 'target', 'lr', 'train', 'test', 'off_dirac'}]}: the
    relative errors at each measured step (NaN once diverged) and, for BN-plain stacks, the
    off-Dirac fraction at step 0 and at the end."""
    combos = [(s, t, lr) for s in seeds for t in ys for lr in lrs]
    init = {s: init_stack(kind, depth, x, s) for s in seeds}
    variables = jax.tree.map(lambda *v: jnp.stack(v), *[init[s] for s, _, _ in combos])
    has_bn = 'batch_stats' in variables
    # One device copy of each target and of x; each combination indexes its target.
    names = list(ys)
    which = jnp.asarray([names.index(t) for _, t, _ in combos])
    y_train = jnp.stack([jnp.asarray(ys[t][0]) for t in names])
    y_test = jnp.stack([jnp.asarray(ys[t][1]) for t in names])
    x, x_test = jnp.asarray(x), jnp.asarray(x_test)
    lr = jnp.asarray([c[2] for c in combos], jnp.float32)
    net = Stack('plain' if kind == 'plain_dirac' else kind, depth)
    tx = optax.trace(decay=MOMENTUM)
    opt_state = jax.vmap(tx.init)(variables['params'])

    def loss_fn(params, stats, xb, yb):
        v = {'params': params, **({'batch_stats': stats} if has_bn else {})}
        if has_bn:
            f, new = net.apply(v, xb, train=True, mutable=['batch_stats'])
            return jnp.mean(jnp.square(f - yb)), new['batch_stats']
        return jnp.mean(jnp.square(net.apply(v, xb, train=True) - yb)), None

    def step(variables, opt_state, xb, yb, lr):
        stats = variables.get('batch_stats')
        grads, stats = jax.grad(loss_fn, has_aux=True)(variables['params'], stats, xb, yb)
        trace, opt_state = tx.update(grads, opt_state)
        params = jax.tree.map(lambda p, u: p - lr * u, variables['params'], trace)
        return {'params': params, **({'batch_stats': stats} if has_bn else {})}, opt_state

    step = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0, 0)))
    apply = jax.jit(jax.vmap(lambda v, xb: net.apply(v, xb, train=False), in_axes=(0, None)))
    fit = x[: min(len(x), 1024)]

    def measure(variables):
        return (
            np.asarray(
                _relative_error(apply, variables, fit, y_train[:, : len(fit)], which, batch)
            ),
            np.asarray(_relative_error(apply, variables, x_test, y_test, which, batch)),
        )

    rng = np.random.default_rng(0)
    order, pos = rng.permutation(len(x)), 0
    measured, train_err, test_err = [0], [], []
    first = measure(variables)
    train_err.append(first[0])
    test_err.append(first[1])
    plain = kind in ('plain', 'plain_dirac', 'linear_plain')
    dirac0 = np.asarray(off_dirac(variables['params'])) if plain else None
    for t in range(1, steps + 1):
        if pos + batch > len(x):
            order, pos = rng.permutation(len(x)), 0
        idx = order[pos : pos + batch]
        pos += batch
        variables, opt_state = step(variables, opt_state, x[idx], y_train[:, idx][which], lr)
        if t % eval_every == 0 or t == steps:
            tr, te = measure(variables)
            measured.append(t)
            train_err.append(tr)
            test_err.append(te)
    dirac1 = np.asarray(off_dirac(variables['params'])) if dirac0 is not None else None
    train_err, test_err = np.stack(train_err, 1), np.stack(test_err, 1)
    out = []
    for i, (s, t, lr_i) in enumerate(combos):
        # Once non-finite, a run stays diverged: its later numbers are not a fit.
        bad = np.cumsum(~np.isfinite(train_err[i])) > 0
        row = {
            'seed': s,
            'target': t,
            'lr': lr_i,
            'train': np.where(bad, np.nan, train_err[i]).tolist(),
            'test': np.where(bad, np.nan, test_err[i]).tolist(),
        }
        if dirac0 is not None:
            row['off_dirac'] = [float(dirac0[i]), float(dirac1[i])]
        out.append(row)
    return {'steps': measured, 'runs': out}


def features(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray, str]:
    """(training x, test x, description): the activations entering stage `identity.stage`
    (1 = the stem's output) of the source run (eval mode) or of a freshly initialised
    `config.model` (seed `config.seed`), on the first `identity.examples` training images
    (epoch-0 order) and `identity.eval_examples` test images, float32 NHWC. ValueError (one
    line) for a stage the model does not have."""
    c = config.identity
    if c.source:
        run = runs.load_run(c.source, batch=256)
        model, dataset, model_config = run.model, run.dataset, run.config.model
        variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
        what = f'{run.label} of {c.source} at step {run.step}'
    else:
        dataset = data.create_dataset(config)
        model_config = config.model
        model = models.create_model(model_config, dataset.num_classes)
        image = jnp.zeros((1, *dataset.image_shape), jnp.float32)
        variables = _kept(model.init(jax.random.key(config.seed), image, train=False))
        what = f'a freshly initialised {models.run_label(model_config.to_dict())}'
    stages = models.model_layout(model_config).stages()
    if c.stage not in stages:
        raise ValueError(f'identity.stage={c.stage} is not a stage of {what}: use 1..{len(stages)}')
    name = models.layout.STEM if c.stage == 1 else stages[c.stage - 1][-1].name
    apply = jax.jit(
        lambda v, im: model.apply(v, im, train=False, mutable=['intermediates'])[1]['intermediates']
    )

    def entering(images: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(images), 256):
            inter = flax.traverse_util.flatten_dict(apply(variables, images[s : s + 256]), sep='/')
            out.append(np.asarray(inter[f'{name}/output'][0], np.float32))
        return np.concatenate(out)

    train = runs.dataset_examples(dataset, c.examples)['image']
    test = runs.dataset_examples(dataset, c.eval_examples, split='test')['image']
    return entering(train), entering(test), f'the output of {name} of {what}'


def best_errors(rows: list[dict], kind: str, depth: int, target: str) -> dict[int, float]:
    """{seed: final relative training error at the best lr of that seed} for one stack, depth
    and target; inf for a seed whose every lr diverged."""
    per_seed: dict[int, float] = {}
    for r in rows:
        if (r['stack'], r['depth'], r['target']) == (kind, depth, target):
            e = r['train'][-1]
            e = e if np.isfinite(e) else np.inf
            per_seed[r['seed']] = min(per_seed.get(r['seed'], np.inf), e)
    return per_seed


def summary(rows: list[dict]) -> dict[str, str]:
    """{'<stack> x<depth> <target>': final training error at the best lr, 'm (lo to hi over n
    seeds)'} for every stack, depth and target of the rows; for plain stacks also
    '... off-Dirac': the off-Dirac fraction at step 0 and at the end of those best runs (mean
    over seeds)."""
    out = {}
    for k, d, t in dict.fromkeys((r['stack'], r['depth'], r['target']) for r in rows):
        best = best_errors(rows, k, d, t)
        out[f'{k} x{d} {t}'] = seeds_of(best.values()).show(lambda v: f'{v:.3g}')
        chosen = [
            r for r in rows
            if (r['stack'], r['depth'], r['target']) == (k, d, t) and 'off_dirac' in r
            and (r['train'][-1] == best[r['seed']] or not np.isfinite(best[r['seed']]))
        ]  # fmt: skip
        if chosen:
            start, end = np.mean([r['off_dirac'] for r in chosen], 0)
            out[f'{k} x{d} {t} off-Dirac'] = f'{start:.3f} -> {end:.3f}'
    return out


def verdict(rows: list[dict], depth: int) -> dict:
    """`RULE` applied to `run_experiment`'s rows at `depth`: {'verdict', 'decades'} with,
    per target, the plain minus residual log10 final training error (each stack at its best
    lr, per seed) as Seeds text."""
    best = functools.partial(best_errors, rows, depth=depth)

    decades, sign = {}, {}
    for t in TARGETS:
        p, q = best('plain', target=t), best('residual', target=t)
        seeds = sorted(set(p) & set(q))
        if not seeds:
            return {'verdict': f'undecided: no plain and residual runs of depth {depth} on {t}'}
        d = seeds_of([np.log10(max(p[s], 1e-12)) - np.log10(max(q[s], 1e-12)) for s in seeds])
        decades[t] = d.show(lambda v: f'{v:+.2f}')
        sign[t] = gap(d, seeds_of([DECADES] * d.n))
    worse = {t: sign[t] == 1 for t in TARGETS}
    not_worse = {t: sign[t] == -1 for t in TARGETS}
    if worse['identity'] and worse['near_identity'] and not_worse['random']:
        v = 'the identity-as-zero prediction holds'
    elif not_worse['identity'] or not_worse['near_identity'] or worse['random']:
        v = 'the identity-as-zero prediction fails'
    else:
        v = 'undecided'
    n = min(len(best('plain', target=t)) for t in TARGETS)
    if n == 1:
        v += '; provisional: one seed'
    return {'verdict': v, 'decades': decades}


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole experiment and writes `identity.json` (every number) and `identity.png`
    under `workdir`; returns what it wrote to the JSON."""
    c = config.identity
    x, x_test, described = features(config)
    ys = targets(x, x_test, c.delta, config.seed)
    ys = {t: ys[t] for t in c.targets}
    rows, measured = [], None
    for kind in c.stacks:
        for depth in c.depths:
            start = time.perf_counter()
            r = train_stack(kind, depth, x, x_test, ys, c.lrs, c.seeds, c.steps, c.batch,
                            c.eval_every)  # fmt: skip
            logging.info('%s x%d: %d runs trained in %.0f s', kind, depth, len(r['runs']),
                         time.perf_counter() - start)  # fmt: skip
            measured = r['steps']
            rows += [{'stack': kind, 'depth': depth, **row} for row in r['runs']]
    result = {
        'inputs': described,
        'shape': list(x.shape[1:]),
        'examples': [len(x), len(x_test)],
        'settings': c.to_dict(),
        'predictions': PREDICTIONS,
        'rule': RULE,
        'steps': measured,
        'runs': rows,
    }
    result['summary'] = summary(rows)
    if {'plain', 'residual'} <= set(c.stacks) and set(TARGETS) <= set(c.targets):
        result['finding'] = verdict(rows, max(c.depths))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'identity.json'), 'w') as f:
        json.dump(result, f, indent=1)
    figure(result).savefig(os.path.join(workdir, 'identity.png'), dpi=110)
    return result


def figure(result: dict) -> plt.Figure:
    """Relative training error against steps: a row per target, a column per depth, a line
    per stack (its best lr, mean over seeds)."""
    ts = list(dict.fromkeys(r['target'] for r in result['runs']))
    ds = sorted({r['depth'] for r in result['runs']})
    stacks = list(dict.fromkeys(r['stack'] for r in result['runs']))
    fig, axes = plt.subplots(len(ts), len(ds), figsize=(3.6 * len(ds), 2.8 * len(ts)),
                             squeeze=False, sharey=True)  # fmt: skip
    for i, t in enumerate(ts):
        for j, d in enumerate(ds):
            ax = axes[i, j]
            for k, kind in enumerate(stacks):
                by_lr = {}
                for r in result['runs']:
                    if (r['stack'], r['depth'], r['target']) != (kind, d, t):
                        continue
                    by_lr.setdefault(r['lr'], []).append(r['train'])
                # A diverged seed (NaN) makes its lr's mean NaN: that lr is not the best.
                curves = {lr: np.mean(np.asarray(v, float), 0) for lr, v in by_lr.items()}
                lr = min(curves, key=lambda a: np.nan_to_num(curves[a][-1], nan=np.inf))
                if not np.isfinite(curves[lr][-1]):
                    continue  # Every lr diverged.
                ax.semilogy(result['steps'], curves[lr], color=f'C{k}', label=f'{kind} (lr {lr:g})')
            ax.set_title(f'{t}, {d} block{"s" * (d > 1)}', fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel('relative error (train)')
            if i == len(ts) - 1:
                ax.set_xlabel('step')
            ax.legend(fontsize=6)
    fig.suptitle(f'Fitting maps of {result["inputs"]}', fontsize=9)
    fig.tight_layout()
    return fig
