"""Image folders decoded into memory with PIL (`resjax.data.image_folder`), without TensorFlow.

Tiny folders of 8x8 PNGs with random pixels: every number the loader yields is checked against
the files as PIL reads them.
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import resjax.data
from resjax import config_lib
from resjax.data import create_dataset, image_folder

MEAN, STD = np.array(image_folder.MEAN), np.array(image_folder.STD)


def make_folder(root, per_class=(3, 2), size=(8, 8)):
    """root/{train,test}/{cat,dog}/<i>.png of random pixels; train/dog/0 grayscale, 1 RGBA."""
    rng = np.random.default_rng(0)
    for split, n in zip(('train', 'test'), per_class, strict=True):
        for label in ('dog', 'cat'):
            os.makedirs(root / split / label)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
                if (split, label, i) == ('train', 'dog', 0):
                    image = Image.fromarray(pixels[..., 0], 'L')
                elif (split, label, i) == ('train', 'dog', 1):
                    image = Image.fromarray(pixels, 'RGBA')
                else:
                    image = Image.fromarray(pixels[..., :3])
                image.save(root / split / label / f'{i}.png')
    return root


def folder_config(root, cache, augment='none', batch=4):
    c = config_lib.default_config()
    c.dataset.name = 'image_folder'
    c.dataset.data_dir = str(root)
    c.dataset.cache_dir = str(cache)
    c.dataset.augment = augment
    c.train.batch_size = batch
    c.train.eval_batch_size = batch
    return c


def decoded(paths):
    """The files as PIL reads them, RGB, normalised in float64."""
    pixels = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    return (pixels / 255 - MEAN) / STD


def test_eval_is_the_decoded_pixels_normalised_and_the_cache_is_reused(tmp_path, monkeypatch):
    root, cache = make_folder(tmp_path / 'data'), tmp_path / 'cache'
    config = folder_config(root, cache)
    ds = create_dataset(config, 0, 1)
    folder = image_folder.list_folder(str(root))
    assert folder.label_names == ('cat', 'dog')  # Sorted names: ids as tf.data's ImageFolder.
    assert (ds.num_classes, ds.image_shape, ds.num_train, ds.num_eval) == (2, (8, 8, 3), 6, 4)
    batches = list(ds.eval_batches())
    assert len(batches) == 1 and batches[0]['mask'].tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(batches[0]['image'], decoded(folder.eval_files), atol=1e-5)
    np.testing.assert_array_equal(
        batches[0]['label'], [('dog' in p) * 1 for p in folder.eval_files]
    )
    # An epoch of training (no augmentation) is every training image once, labels attached.
    steps = list(itertools.islice(ds.train_batches(0), 2))
    images = np.concatenate([b['image'] for b in steps])[:6]
    labels = np.concatenate([b['label'] for b in steps])[:6]
    expected = decoded(folder.train_files)
    match = [int(np.abs(expected - image).max(axis=(1, 2, 3)).argmin()) for image in images]
    assert sorted(match) == list(range(6))
    np.testing.assert_allclose(images, expected[match], atol=1e-5)
    np.testing.assert_array_equal(labels, folder.train_labels[match])
    gray = expected[folder.train_files.index(str(root / 'train' / 'dog' / '0.png'))]
    np.testing.assert_allclose(gray * STD + MEAN, ((gray * STD + MEAN)[..., :1]).repeat(3, -1))

    assert len(os.listdir(cache)) == 2  # One decoded array per split.
    monkeypatch.setattr(image_folder, 'read_image', lambda path: pytest.fail(f'decoded {path}'))
    again = create_dataset(config, 0, 1)  # From the cache: no file is decoded.
    np.testing.assert_array_equal(next(again.eval_batches())['image'], batches[0]['image'])
    monkeypatch.undo()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder.eval_files[0])  # Changed file:
    np.testing.assert_allclose(  # decoded again.
        next(create_dataset(config, 0, 1).eval_batches())['image'][0],
        np.broadcast_to(-MEAN / STD, (8, 8, 3)),
        atol=1e-5,
    )


def test_cifar_augment_pads_with_the_mean_crops_and_flips():
    image = np.arange(1.0, 65.0, dtype=np.float32).reshape(1, 8, 8, 1)
    crop = lambda y, x, flip: image_folder.cifar_augment(
        image, np.array([[y, x]]), np.array([flip])
    )
    np.testing.assert_array_equal(crop(4, 4, False), image)  # Offset 4 = no shift.
    np.testing.assert_array_equal(crop(4, 4, True), image[:, :, ::-1])
    top_left = crop(0, 0, False)[0, ..., 0]
    np.testing.assert_array_equal(top_left[4:, 4:], image[0, :4, :4, 0])
    assert (top_left[:4] == 0).all() and (top_left[:, :4] == 0).all()
    np.testing.assert_array_equal(crop(8, 8, True)[0, :4, 4:, 0], image[0, 4:, 4:, 0][:, ::-1])
    offsets, flips = image_folder.cifar_draws(0, 5, 1000)
    assert offsets.min() == 0 and offsets.max() == 8 and 400 < flips.sum() < 600
    same = image_folder.cifar_draws(0, 5, 1000)
    np.testing.assert_array_equal(same[0], offsets)
    assert not np.array_equal(image_folder.cifar_draws(0, 6, 1000)[0], offsets)
    assert not np.array_equal(image_folder.cifar_draws(1, 5, 1000)[0], offsets)


def test_train_batches_are_augmented_from_seed_and_step_and_resume_exactly(tmp_path):
    root, cache = make_folder(tmp_path / 'data', per_class=(5, 1)), tmp_path / 'cache'
    plain = create_dataset(folder_config(root, cache, 'none'), 0, 1)
    ds = create_dataset(folder_config(root, cache, 'cifar'), 0, 1)
    first = list(itertools.islice(ds.train_batches(0), 4))  # Batches of 4 over 10: 2 epochs.
    for step, (batch, unaugmented) in enumerate(zip(first, plain.train_batches(0))):
        offsets, flips = image_folder.cifar_draws(0, step, 4)
        expected = image_folder.cifar_augment(unaugmented['image'], offsets, flips)
        np.testing.assert_array_equal(batch['image'], expected)
        np.testing.assert_array_equal(batch['label'], unaugmented['label'])
    resumed = next(ds.train_batches(3))
    np.testing.assert_array_equal(resumed['image'], first[3]['image'])
    # Two processes: each its half of the one-process global batch, augmentation included.
    config = folder_config(root, cache, 'cifar')
    halves = [next(create_dataset(config, i, 2).train_batches(2)) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), first[2]['image'])
    config.seed = 1
    other_seed = next(create_dataset(config, 0, 1).train_batches(0))
    assert not np.array_equal(other_seed['image'], first[0]['image'])
    # data_seed keys order and augmentation, not seed: seed 1 with data_seed 0 is seed 0's.
    config.data_seed = 0
    np.testing.assert_array_equal(next(create_dataset(config, 0, 1).train_batches(0))['image'],
                                  first[0]['image'])  # fmt: skip


def test_checks_skipped_files_one_class_bad_and_odd_sized_files(tmp_path, caplog):
    root, cache = make_folder(tmp_path / 'data'), tmp_path / 'cache'
    deeper = root / 'train' / 'cat' / 'extra'
    os.makedirs(deeper)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(deeper / '0.png')
    (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
    (root / 'test' / 'loose.png').write_bytes(b'')
    with caplog.at_level('WARNING'):
        ds = create_dataset(folder_config(root, cache), 0, 1)
    assert (ds.num_train, ds.num_eval) == (6, 4)
    (message,) = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
    assert '3 file(s) skipped' in message and 'notes.txt' in message, message
    assert '1 in a folder below <split>/<label>/' in message and '1 directly in test/' in message

    bad = root / 'train' / 'dog' / 'bad.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    with pytest.raises(ValueError, match=r'image file .*train/dog/bad\.png cannot be read'):
        create_dataset(folder_config(root, cache), 0, 1)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r'bad\.png is 9x8, not 8x8 like .*=imagenet'):
        create_dataset(folder_config(root, cache), 0, 1)

    one = tmp_path / 'one'
    for split in ('train', 'test'):
        os.makedirs(one / split / 'cat')
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / split / 'cat' / '0.png')
    with pytest.raises(ValueError, match=rf'{one} has 1 class.*at least two'):
        create_dataset(folder_config(one, cache), 0, 1)
    os.makedirs(tmp_path / 'empty' / 'train' / 'cat')
    with pytest.raises(ValueError, match=f'no images under {tmp_path / "empty" / "train"}'):
        create_dataset(folder_config(tmp_path / 'empty', cache), 0, 1)


def test_loader_choice_and_what_needs_tensorflow(tmp_path, monkeypatch):
    root, cache = make_folder(tmp_path / 'data'), tmp_path / 'cache'
    config = folder_config(root, cache, 'imagenet')
    config.dataset.loader = 'numpy'
    with pytest.raises(ValueError, match="loader='numpy' does not do the 'imagenet'"):
        create_dataset(config, 0, 1)
    config.dataset.loader = 'pil'
    with pytest.raises(ValueError, match=r"dataset.loader='pil': use one of"):
        create_dataset(config, 0, 1)
    folder = image_folder.list_folder(str(root))
    config.dataset.loader, config.dataset.augment = 'auto', 'cifar'
    assert image_folder.choose_loader(folder, config.dataset) == 'numpy'
    monkeypatch.setattr(image_folder, 'IN_MEMORY_MAX_BYTES', 8 * 8 * 3 * 9)  # 10 images: too big.
    assert image_folder.choose_loader(folder, config.dataset) == 'tfds'
    # As if TensorFlow were not installed: the tf.data path says so, and how to avoid it.
    monkeypatch.setitem(sys.modules, 'resjax.data.tfds_pipeline', None)
    monkeypatch.delattr(resjax.data, 'tfds_pipeline', raising=False)
    with pytest.raises(
        ValueError, match=r'needs the tf.data loader \(decoded images over.*loader=numpy'
    ):
        create_dataset(config, 0, 1)


NO_TENSORFLOW = """
import itertools, sys

# As if not installed: `import` raises ImportError, importlib.util.find_spec returns None.
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
from resjax import config_lib, data, train  # The training loop's imports, too.
c = config_lib.default_config()
c.dataset.name, c.dataset.data_dir, c.dataset.cache_dir = 'image_folder', *sys.argv[1:]
c.train.batch_size = c.train.eval_batch_size = 4
ds = data.create_dataset(c)
assert len(list(itertools.islice(ds.train_batches(0), 3))) == 3 and list(ds.eval_batches())
assert not any(m.startswith('tensorflow') for m, v in sys.modules.items() if v)
print('OK')
"""


def test_image_folder_needs_no_tensorflow(tmp_path):
    # Only the input differs from the digits run that test_train.py trains without TensorFlow.
    root = make_folder(tmp_path / 'data')
    out = subprocess.run(
        [sys.executable, '-c', NO_TENSORFLOW, str(root), str(tmp_path / 'cache')],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith('OK'), out.stderr[-2000:]
