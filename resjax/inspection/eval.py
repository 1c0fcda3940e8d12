"""eval: train and test mean loss and accuracy, BatchNorm in eval mode."""

from __future__ import annotations

from resjax import runs
from resjax.inspection import common
from resjax.inspection.common import Opts


def eval_numbers(run: runs.Run, opts: Opts) -> dict:
    """Train and test mean loss and accuracy with BN in eval mode (running statistics). Train =
    the first `eval_examples` training examples (0 = all), test = the eval split (as many)."""
    train = common.evaluate(
        run, runs.to_batches(runs.train_examples(run, opts.eval_examples), opts.batch), 'eval'
    )
    test = common.evaluate(run, runs.test_batches(run, opts.eval_examples), 'eval')
    return {
        'step': run.step,
        'bn_mode': 'eval',
        'train/loss': train['loss'],
        'train/accuracy': train['accuracy'],
        'test/loss': test['loss'],
        'test/accuracy': test['accuracy'],
    }


def _eval_text(label: str, r: dict) -> str:
    return (
        f'{label} step {r["step"]}: train loss {r["train/loss"]:.4f} acc '
        f'{r["train/accuracy"]:.4f} | test loss {r["test/loss"]:.4f} acc {r["test/accuracy"]:.4f}'
    )


def check(opts: Opts, probes: list[str]) -> None:
    """Refuses a negative `eval_examples`."""
    if opts.eval_examples < 0:
        raise common.InspectError(
            f'--eval_examples={opts.eval_examples} must be 0 (all) or positive'
        )


PROBE = common.Probe(
    eval_numbers,
    timed=True,
    text=_eval_text,
    options={'eval_examples': common.Option(int, 0, 'eval: examples per split (0 = all).')},
    check=check,
)
