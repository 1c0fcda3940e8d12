import glob
import importlib.util
import os

import pytest

from resjax import models, train

ALL = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py')))
# configs/identity.py configures scripts/identity.py, not a training run.
IDENTITY = [p for p in ALL if os.path.basename(p) == 'identity.py']
CONFIGS = [p for p in ALL if p not in IDENTITY]


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location('config_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize('arg', [None, 'smoke'])
def test_config_files_validate(path, arg):
    config = load(path, arg)
    train.validate_config(config)
    models.create_model(config.model, 10)
    t = config.train
    if arg == 'smoke':  # Shrinks the run: a few steps, not the full config's.
        assert 0 < t.steps <= 10 < load(path).train.steps
    # Warm-up ends, and rows, evals and checkpoints happen, within the run.
    assert 0 <= t.warmup_steps < t.steps
    assert max(t.log_every_steps, t.eval_every_steps, t.checkpoint_every_steps) <= t.steps
    # Every config file documents the command that runs it (big_vision's habit).
    with open(path) as f:
        assert 'scripts/train.py --config configs/' + os.path.basename(path) in f.read()


@pytest.mark.parametrize('arg', [None, 'cpu', 'smoke'])
def test_identity_config_validates_and_smoke_shrinks_it(arg):
    from resjax import identity

    (path,) = IDENTITY
    config = load(path, arg)
    identity.validate_config(config)
    if arg:
        assert config.identity.steps < load(path).identity.steps
    with open(path) as f:
        assert 'scripts/identity.py --config configs/identity.py' in f.read()


def test_smoke_keeps_every_code_path_on():
    config = load(os.path.join(os.path.dirname(CONFIGS[0]), 'cifar10_resnet20.py'), 'smoke')
    t = config.train
    assert t.eval_every_steps < t.steps and t.checkpoint_every_steps < t.steps
    assert 0 < config.probes.every_steps <= t.steps


def test_unknown_config_argument_is_an_error():
    with pytest.raises(ValueError, match='smoke'):
        load(CONFIGS[0], 'smok')
