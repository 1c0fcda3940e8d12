"""Shared test set-up: small compile times (tests run real code paths on tiny shapes)."""

import jax
import pytest

from resjax import config_lib

# As flax's examples do in their train tests: XLA's optimisations cost far more compile time
# than they save on the tiny shapes used here.
jax.config.update('jax_disable_most_optimizations', True)


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
