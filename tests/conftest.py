"""Shared test set-up: small compile times (tests run real code paths on tiny shapes)."""

import contextlib
import gc

import jax
import pytest

from resjax import config_lib

# As flax's examples do in their train tests: XLA's optimisations cost far more compile time
# than they save on the tiny shapes used here.
jax.config.update('jax_disable_most_optimizations', True)


# The files that take longest (by one worker's time in a fresh clone), scheduled first:
# pytest-xdist's `--dist loadfile` hands files to the two workers in collection order, and a
# long file collected last leaves the other worker idle for its whole length.
LONGEST_FIRST = [
    'test_study.py', 'test_signals.py', 'test_parallel.py', 'test_train.py', 'test_hessian.py',
    'test_inspect.py', 'test_models.py', 'test_faults.py',
]  # fmt: skip


def pytest_collection_modifyitems(items):
    """Longest files first (stable otherwise), for the two workers' balance."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_sessionfinish(session):
    """The session's last full garbage collection, then the heap frozen (docs/notes.md).

    After the session pytest collects garbage twice more, to report exceptions raised in
    finalizers. With a test worker's heap (millions of objects: XLA executables, TensorFlow)
    each pass took ~3 s on 2 cores; xdist asks the workers to exit once the last reports the
    session finished, which is after this hook, and execnet sends a worker still busy after 5 s
    a SIGINT, which surfaced as a KeyboardInterrupt in JAX's gc callback. Collecting here, before
    that report, still runs every finalizer while pytest listens; frozen objects are never
    traversed again, so the later passes take milliseconds.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture
def digits_config():
    """A digits config small enough to train a few steps in seconds."""
    c = config_lib.default_config()
    c.dataset.name = 'digits'
    c.dataset.augment = 'none'
    c.model.depth = 8
    c.model.width = 0.5
    c.train.steps = 6
    c.train.batch_size = 32
    c.train.eval_batch_size = 120
    c.train.schedule = 'constant'
    c.train.lr = 0.05
    c.train.log_every_steps = 2
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 3
    return c


@pytest.fixture
def x64():
    """float64 for one test, restored after so other test files keep float32."""
    previous = jax.config.read('jax_enable_x64')
    jax.config.update('jax_enable_x64', True)
    yield
    jax.config.update('jax_enable_x64', previous)


@contextlib.contextmanager
def persistent_compilation_cache(path):
    """JAX's persistent compilation cache in `path` for the duration, every executable kept
    (this process's other tests compile without it)."""
    from jax._src import compilation_cache

    keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
    previous = {k: getattr(jax.config, k) for k in keys}
    compilation_cache.reset_cache()
    jax.config.update(keys[0], path)
    jax.config.update(keys[1], 0.0)
    try:
        yield
    finally:
        for k, v in previous.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()
