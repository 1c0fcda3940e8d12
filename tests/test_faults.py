"""Faults in a real process: preemption (SIGTERM), SIGKILL, a save killed midway, damaged
checkpoints, bad input. Subprocesses, short timeouts, always reaped.

One uninterrupted digits run (module fixture) is the reference for every resume test and the
finished workdir for the read-only and refusal tests: training subprocesses are the slow part.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resjax import checkpoint, data, inspection, metrics, runs, train, workdir
from resjax.metrics import read_metrics

# orbax 0.12.8 closes the event loop of a failed restore while TensorStore reads it started
# are still pending; each read that completes later calls the closed loop from TensorStore's
# thread (docs/notes.md, orbax). Only the damaged-checkpoint test makes a restore fail; the
# message can surface in the test that follows it.
pytestmark = pytest.mark.filterwarnings(
    'ignore:(?s)Exception ignored in. None.*call_soon_threadsafe.*Event loop is closed'
    ':pytest.PytestUnraisableExceptionWarning'
)
ROOT = os.path.join(os.path.dirname(__file__), '..')
LOG = 5  # train.log_every_steps
SMALL = [
    '--config.model.depth=8',
    '--config.model.width=0.25',
    '--config.train.batch_size=32',
    f'--config.train.log_every_steps={LOG}',
    '--config.train.eval_every_steps=1000',
    '--config.probes.every_steps=0',
]
STEPS, EVERY = 40, LOG  # Checkpoints on log boundaries: rows after them are comparable.
RUN = [f'--config.train.steps={STEPS}', f'--config.train.checkpoint_every_steps={EVERY}']
TMP = '.orbax-checkpoint-tmp'  # orbax's name for a step directory still being written


def _command(workdir, *overrides):
    return [
        sys.executable,
        os.path.join(ROOT, 'scripts', 'train.py'),
        '--config',
        os.path.join(ROOT, 'configs', 'digits_resnet20.py'),
        '--workdir',
        str(workdir),
        *SMALL,
        *overrides,
    ]


def _train(workdir, *overrides, wait=True):
    env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
    proc = subprocess.Popen(
        _command(workdir, *overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    return proc.returncode, err


def _wait_for_checkpoint(proc, workdir, above):
    """Polls until `proc` has finalised a checkpoint with a step > `above`; returns its step."""
    directory = os.path.join(workdir, 'checkpoints')
    deadline = time.time() + 200
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f'exited {proc.returncode} before a checkpoint: {proc.stderr.read()[-2000:]}'
            )
        steps = (
            [int(n) for n in os.listdir(directory) if n.isdigit()]
            if os.path.isdir(directory)
            else []
        )
        if steps and max(steps) > above:
            return max(steps)
        time.sleep(0.05)
    pytest.fail(f'no checkpoint above step {above} within 200 s')


def _error_lines(err):
    """stderr without absl's log lines (I/W + date) and their continuation lines."""
    return [line for line in err.strip().splitlines() if not line.startswith(('W', 'I', ' '))]


def _manager(workdir):
    return checkpoint.checkpoint_manager(str(workdir), read_only=True)


def _saved_state(workdir, step):
    # Explicit args: a read-only manager's bare `restore(step)` can return no leaves at all.
    state = jax.tree.leaves(_manager(workdir).restore(step, args=ocp.args.StandardRestore()))
    assert len(state) > 50  # params, BN statistics, momentum, counters
    return state


def _tree_digest(root):
    """Names, sizes, mtimes and contents of every file under `root` but the lock file (whose
    content names the last run that held it)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        h.update(os.path.relpath(dirpath, root).encode())
        for name in sorted(set(filenames) - {workdir.LOCK_FILE}):
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            h.update(f'{name} {st.st_size} {st.st_mtime_ns}'.encode())
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def _config_of(workdir):
    with open(os.path.join(workdir, 'config.json')) as f:
        c = ml_collections.ConfigDict(json.load(f))
    c.dataset.image_shape = tuple(c.dataset.image_shape)
    return c


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """A finished uninterrupted run of `RUN` (read it, never write to it)."""
    workdir = tmp_path_factory.mktemp('reference')
    code, err = _train(workdir, *RUN)
    assert code == 0, err[-2000:]
    return workdir


@pytest.mark.slow
def test_sigterm_then_sigkill_then_rerun_matches_the_uninterrupted_run(reference, tmp_path):
    work, rng = tmp_path / 'run', random.Random()
    ckpt_dir = work / 'checkpoints'
    # 1. SIGTERM at a random point after the first checkpoint: save this step and exit 0.
    proc = _train(work, *RUN, wait=False)
    try:
        _wait_for_checkpoint(proc, work, above=0)
        delay = rng.uniform(0, 0.2)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        sent = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert time.time() - sent < 30
    preempted = _manager(work).latest_step()
    assert f'Preempted: saved step {preempted} ' in err, (delay, err[-2000:])
    assert 0 < preempted < STEPS

    # 2. Rerun; SIGKILL at a random point after its first new checkpoint.
    proc = _train(work, *RUN, wait=False)
    try:
        _wait_for_checkpoint(proc, work, above=preempted)
        delay = rng.uniform(0, 0.2)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed = _manager(work).latest_step()
    assert preempted < killed < STEPS, f'the run finished before the kill ({delay:.2f} s)'

    # 3. A save killed midway leaves `<step>.orbax-checkpoint-tmp` (the kill may have left a
    # real one): plant one above the last complete step, as a partial copy. Never the latest.
    planted = ckpt_dir / f'{killed + EVERY}{TMP}'
    if not planted.exists():
        shutil.copytree(ckpt_dir / str(killed), planted)
        os.remove(planted / 'commit_success.txt')
        shutil.rmtree(planted / 'default' / 'ocdbt.process_0')
    assert _manager(work).latest_step() == killed

    # 4. The same command finishes the run: state and metrics equal the uninterrupted run's.
    code, err = _train(work, *RUN)
    assert code == 0, err[-2000:]
    assert not [p.name for p in ckpt_dir.iterdir() if TMP in p.name]
    for a, b in zip(_saved_state(work, STEPS), _saved_state(reference, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)  # params, BN statistics, optimizer state, rng
    rows, ref_rows = (read_metrics(str(d)) for d in (work, reference))
    train_steps = [r['step'] for r in rows if 'train/loss' in r]
    assert train_steps == [r['step'] for r in ref_rows if 'train/loss' in r]  # none twice
    # A row averages the steps since the previous row: the one whose window the SIGTERM cut
    # covers only the resumed steps. Every other row is identical (timing aside).
    cut = lambda r: 'train/loss' in r and r['step'] - LOG < preempted < r['step']
    strip = lambda rs: [{k: v for k, v in r.items() if k != 'steps_per_sec'} for r in rs]
    assert strip(r for r in rows if not cut(r)) == strip(r for r in ref_rows if not cut(r))


def test_damaged_or_foreign_checkpoint_is_a_one_line_error(reference, tmp_path):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    config = _config_of(work)
    # Another model on this workdir (allowed by the flag): refused before anything compiles.
    config.model.depth, config.train.allow_config_change = 14, True
    with pytest.raises(train.ConfigError, match=f'checkpoints/{STEPS} cannot be restored'):
        train.train_and_evaluate(config, str(work))
    # The latest step's array files cut short (a crash before the data reached the disk).
    config.model.depth = 8
    for path in (work / 'checkpoints' / str(STEPS) / 'default').glob('**/d/*'):
        with open(path, 'r+b') as f:
            f.truncate(path.stat().st_size // 2)
    with pytest.raises(train.ConfigError, match=f'/{STEPS} .*resume from step {STEPS - EVERY}'):
        train.train_and_evaluate(config, str(work))


def test_read_only_manager_never_writes(reference):
    before = _tree_digest(reference)
    manager = _manager(reference)
    assert manager.all_steps() == [STEPS - 2 * EVERY, STEPS - EVERY, STEPS]
    manager.restore(manager.latest_step())
    manager.close()
    assert _tree_digest(reference) == before


def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, digits_config):
    def error(**changes):
        c = digits_config.copy_and_resolve_references()
        for key, value in changes.items():
            section, name = key.split('__')
            c[section][name] = value
        with pytest.raises(train.ConfigError) as e:
            train.validate_config(c)
        return str(e.value)

    assert '6n+2' in error(model__depth=21)
    assert 'model.family' in error(model__family='vgg')
    assert 'dataset.name' in error(dataset__name='imagenet21k')
    assert 'batch_size' in error(train__batch_size=0)
    monkeypatch.setattr(jax, 'device_count', lambda *a: 3)
    assert 'does not divide by the 3 devices' in error(train__batch_size=32)
    monkeypatch.undo()
    with pytest.raises(ValueError, match='does not divide by the 3 processes'):
        data.create_dataset(digits_config, 0, 3)
    # An image of the wrong rank (synthetic data of shape (8, 8)): named, with the fix.
    c = digits_config.copy_and_resolve_references()
    c.dataset.name, c.dataset.image_shape = 'synthetic', (8, 8)
    with pytest.raises(train.ConfigError, match=r'dataset synthetic: .*\(8, 8\).*image_shape'):
        train.train_and_evaluate(c, str(tmp_path / 'rank'))


def test_incompatible_or_unwritable_workdir_is_refused(tmp_path, digits_config):
    check = lambda c, w: workdir.check(c, str(w), train.RESUME_CRITICAL)
    check(digits_config, tmp_path)
    assert not (tmp_path / 'config.json').exists()  # Written only once a run starts.
    workdir.write_config(digits_config, str(tmp_path))
    other = digits_config.copy_and_resolve_references()
    other.model.residual = False
    with pytest.raises(workdir.WorkdirError, match='model.residual=True.*allow_config_change'):
        check(other, tmp_path)
    other.train.allow_config_change = True
    check(other, tmp_path)  # Allowed.
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    with pytest.raises(workdir.WorkdirError, match='workdir .* is not writable'):
        check(digits_config, blocker / 'run')


@pytest.mark.parametrize('case', ['unknown key', 'incompatible workdir'])
def test_bad_input_exits_2_with_one_line(request, tmp_path, case):
    if case == 'unknown key':
        code, err = _train(tmp_path, '--config.train.nosuchkey=1')
        message = 'nosuchkey'
        assert not (tmp_path / 'checkpoints').exists()
    else:
        work = tmp_path / 'run'
        shutil.copytree(request.getfixturevalue('reference'), work)
        before = _tree_digest(work)
        code, err = _train(work, *RUN, '--config.model.residual=False')
        message = 'allow_config_change'
        assert _tree_digest(work) == before  # refused before touching anything
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], err[-2000:]


NONFINITE_EXIT = """
import runpy, sys
from resjax import train
def diverge(config, workdir):
    raise train.NonFiniteError('non-finite loss or gradient at step 7 (... layer 000_stem/conv)')
train.train_and_evaluate = diverge
script = sys.argv[3]
sys.argv = [script, '--config', sys.argv[1], '--workdir', sys.argv[2]]
runpy.run_path(script, run_name='__main__')
"""


def test_nonfinite_stop_exits_3_with_one_line(tmp_path):
    # The loop's NonFiniteError itself is tested in test_train.py; this is the exit code.
    script = os.path.join(ROOT, 'scripts', 'train.py')
    config = os.path.join(ROOT, 'configs', 'digits_resnet20.py')
    out = subprocess.run(
        [sys.executable, '-c', NONFINITE_EXIT, config, str(tmp_path), script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _error_lines(out.stderr)
    assert out.returncode == 3, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith('stopped: ') and 'step 7' in lines[0]


# ---------------------------------------------------------------------------------------------
# The workdir: one run at a time, nothing changed by a refused run.

HOLD_LOCK = """
import sys, time
from resjax import workdir
with workdir.lock(sys.argv[1]):
    print('held', flush=True)
    time.sleep(600)
"""


def test_a_busy_workdir_is_refused_and_a_dead_holder_blocks_nothing(reference, tmp_path):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    holder = subprocess.Popen(
        [sys.executable, '-c', HOLD_LOCK, str(work)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == 'held'
        before = _tree_digest(work)
        code, err = _train(work, *RUN, '--config.train.steps=45')
        assert code == 2, err[-2000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and f'in use by pid {holder.pid} on' in lines[0], err[-2000:]
        assert _tree_digest(work) == before  # Not a row, not a checkpoint, not config.json.
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock goes with the process.
        holder.wait()
    assert (work / '.lock').exists()
    with workdir.lock(str(work)):
        with pytest.raises(workdir.WorkdirError, match=f'in use by pid {os.getpid()}'):
            with workdir.lock(str(work)):
                pass


def _corrupt_state(work, step, change):
    """Rewrites checkpoint `step`'s array data with `change(state)`, keeping its metadata (and
    so the checksums saved with the original): what flipped bytes on disk amount to."""
    manager = _manager(work)
    state = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    scratch = work / 'scratch'
    other = ocp.CheckpointManager(str(scratch))
    other.save(step, args=ocp.args.StandardSave(change(state)))
    other.wait_until_finished()
    other.close()
    target = work / 'checkpoints' / str(step) / 'default'
    shutil.rmtree(target)
    shutil.copytree(scratch / str(step) / 'default', target)
    shutil.rmtree(scratch)


def _momentum_times(factor):
    def change(state):
        trace = state['opt_state'][1]['trace']  # optax.chain(weight decay, momentum)
        name = sorted(trace)[0]
        trace[name] = jax.tree.map(lambda x: np.asarray(x) * factor, trace[name])
        return state

    return change


@pytest.mark.parametrize('damage', ['nan', 'changed'])
def test_a_checkpoint_that_restores_wrong_numbers_is_named(reference, tmp_path, damage):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    _corrupt_state(work, STEPS, _momentum_times(np.nan if damage == 'nan' else 1.001))
    before = _tree_digest(work)
    config = _config_of(work)
    config.train.steps = STEPS + EVERY
    # A NaN fails the checksum first; without checksums (older checkpoints) the finite check.
    expected = 'differ from the checksums saved' if damage == 'changed' else 'damaged'
    with pytest.raises(
        train.ConfigError,
        match=f'checkpoints/{STEPS} .*{expected}.*opt_state.*resume from step {STEPS - EVERY}',
    ):
        train.train_and_evaluate(config, str(work))
    assert _tree_digest(work) == before
    if damage == 'nan':  # No checksums in the metadata: the finite check still names it.
        metadata = work / 'checkpoints' / str(STEPS) / '_CHECKPOINT_METADATA'
        saved = json.loads(metadata.read_text())
        saved['custom_metadata'] = {}
        metadata.write_text(json.dumps(saved))
        with pytest.raises(train.ConfigError, match=f'{STEPS} holds non-finite values.*opt_state'):
            train.train_and_evaluate(config, str(work))


def test_a_resumed_probe_step_writes_no_row_twice(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    writer = metrics.MetricWriter(str(tmp_path))
    for step in (0, 5, 10):
        writer.write(step, {'train/loss': 1.0 / (step + 1)})
        writer.write(step, {'grad_norm/global': float(step)})  # The probe row of `step`...
    writer.write(15, {'train/loss': 0.5})
    writer.close()
    # ...is written after checkpoint `step` is saved; a run killed after 15's row resumes
    # from checkpoint 10 and computes step 10's probes again.
    writer = metrics.MetricWriter(str(tmp_path), resume_step=10)
    writer.write(10, {'grad_norm/global': 10.0, 'act_std/x': 1.0})
    writer.write(11, {'train/loss': 0.25})
    writer.close()
    rows = metrics.read_metrics(str(tmp_path))
    keys = [(r['step'], k) for r in rows for k in r if k != 'step']
    assert len(keys) == len(set(keys)), rows
    assert [r['step'] for r in rows] == [0, 0, 5, 5, 10, 10, 10, 11]
    assert rows[-2] == {'step': 10, 'act_std/x': 1.0}  # Only what the first run had not written.
    assert path.read_text().endswith('\n')


def test_a_refused_run_changes_nothing_and_bad_workdir_files_are_named(reference, tmp_path):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    config = _config_of(work)
    # Another depth, allowed by the flag, whose checkpoint cannot be restored: refused, and
    # config.json still describes the run, so the right command and inspection still work.
    config.model.depth, config.train.allow_config_change = 14, True
    before = _tree_digest(work)
    with pytest.raises(train.ConfigError, match='cannot be restored'):
        train.train_and_evaluate(config, str(work))
    assert _tree_digest(work) == before
    assert runs.load_run(str(work)).step == STEPS

    # A malformed row mid-file (not a torn last line): named, the file untouched.
    config = _config_of(work)
    lines = (work / 'metrics.jsonl').read_text().splitlines(keepends=True)
    lines.insert(3, '{"step": "three"}\n')
    (work / 'metrics.jsonl').write_text(''.join(lines))
    before = _tree_digest(work)
    with pytest.raises(train.ConfigError, match='metrics.jsonl line 4 is not a metrics row'):
        train.train_and_evaluate(config, str(work))
    assert _tree_digest(work) == before

    # config.json cut in half.
    text = (work / 'config.json').read_text()
    (work / 'config.json').write_text(text[: len(text) // 2])
    with pytest.raises(train.ConfigError, match='config.json cannot be read.*JSONDecodeError'):
        train.train_and_evaluate(config, str(work))


BAD_CONFIGS = {
    'syntax error': ('def get_config(arg=None):\n    return (\n', "line 2: '(' was never closed"),
    'unknown key in the file': (
        'from resjax import config_lib\n'
        'def get_config(arg=None):\n'
        '    c = config_lib.default_config()\n'
        '    c.model.dept = 8\n'
        '    return config_lib.finalize(c, arg)\n',
        "'model.dept' is not one resjax reads (did you mean 'depth'?)",
    ),
    'a file without finalize given :smoke': (
        'from resjax import config_lib\n'
        'def get_config(arg=None):\n'
        '    c = config_lib.default_config()\n'
        "    c.dataset.name = 'digits'\n"
        '    return c\n',
        "ignores its argument 'smoke': its get_config(arg) must end with",
    ),
}


@pytest.mark.parametrize('case', [*BAD_CONFIGS, 'negative seed'])
def test_bad_config_files_and_values_exit_2_with_one_line(tmp_path, case):
    config = os.path.join(ROOT, 'configs', 'digits_resnet20.py')
    overrides, message = ['--config.seed=-1'], 'seed=-1 must be an integer in [0, 2**31)'
    if case in BAD_CONFIGS:
        text, message = BAD_CONFIGS[case]
        config, overrides = tmp_path / 'config.py', []
        config.write_text(text)
    argument = ':smoke' if 'smoke' in case else ''
    command = [
        sys.executable,
        os.path.join(ROOT, 'scripts', 'train.py'),
        '--config',
        f'{config}{argument}',
    ]
    out = subprocess.run(
        [*command, '--workdir', str(tmp_path / 'run'), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _error_lines(out.stderr)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
    assert not (tmp_path / 'run').exists()


def test_help_exits_0_and_says_how_to_choose_and_override_a_config():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'), '--help'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert '--config.<key>=<value>' in out.stdout and ':smoke' in out.stdout
    assert '--workdir' in out.stdout


# ---------------------------------------------------------------------------------------------
# Inspection of damaged and live workdirs.


def test_inspection_of_a_damaged_checkpoint_or_a_file_as_out_is_a_one_line_error(
    reference, tmp_path
):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    (tmp_path / 'file').write_text('')
    opts = inspection.Options()
    with pytest.raises(inspection.InspectError, match="--out .*file' is a file"):
        inspection.inspect([str(work)], ['summary'], str(tmp_path / 'file'), opts)
    data_files = sorted((work / 'checkpoints' / str(STEPS) / 'default').glob('**/d/*'))
    os.remove(data_files[0])
    with pytest.raises(inspection.InspectError, match=f'checkpoints/{STEPS} cannot be restored'):
        inspection.inspect([str(work)], ['summary'], str(tmp_path / 'out'), opts)


def test_inspection_reads_a_relative_workdir_and_survives_a_deleted_latest_step(
    reference, tmp_path, monkeypatch
):
    shutil.copytree(reference, tmp_path / 'run')
    monkeypatch.chdir(tmp_path)
    assert runs.load_run('run').step == STEPS  # orbax needs absolute paths.
    # A live run saves STEPS + EVERY and deletes STEPS between our listing and our read.
    held_step = checkpoint.held_step

    def deleted_while_listed(workdir, step):
        if step == STEPS:
            shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
        return held_step(workdir, step)

    monkeypatch.setattr(checkpoint, 'held_step', deleted_while_listed)
    assert runs.load_run('run').step == STEPS - EVERY  # The latest that exists now.
    shutil.copytree(
        reference / 'checkpoints' / str(STEPS), tmp_path / 'run' / 'checkpoints' / str(STEPS)
    )
    with pytest.raises(inspection.InspectError, match=f'step {STEPS} .*disappeared'):
        runs.load_run('run', step=STEPS)


def test_rerunning_a_finished_run_trains_nothing_and_says_so(reference, tmp_path, caplog):
    work = tmp_path / 'run'
    shutil.copytree(reference, work)
    before = _tree_digest(work)
    with caplog.at_level('INFO'):
        state = train.train_and_evaluate(_config_of(work), str(work))
    assert int(state.step) == STEPS
    assert any('Already complete' in r.getMessage() for r in caplog.records)
    assert _tree_digest(work) == before
