"""The TFDS / image-folder input pipeline, offline: mocked cifar10 whose example i encodes i.

The mock keeps TFDS's real split arithmetic (metadata written to a temporary data_dir), so
process shares, epochs and resumption are checked on example identities, not just shapes.
"""

import itertools
import os

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from resjax import config_lib  # noqa: E402
from resjax.data import create_dataset, tfds_pipeline  # noqa: E402

NUM_TRAIN, NUM_TEST = 40, 21
CIFAR_MEAN, CIFAR_STD = (np.array(v) for v in tfds_pipeline.NORMALIZATION['cifar10'])
FOLDER_MEAN, FOLDER_STD = (np.array(v) for v in tfds_pipeline.NORMALIZATION['image_folder'])


def indexed_examples(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Mock of `builder._as_dataset`: example i of a split has channels (i, 255 - i, 8 * column)
    and label i % 10. Reads exactly the examples that TFDS resolves `split` to."""
    del decoders, read_config, shuffle_files  # resjax always skips decoding: images are PNG bytes.
    (instruction,) = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits)

    def example(i):
        first = tf.fill([32, 32], i)
        column = tf.broadcast_to(tf.range(32, dtype=tf.int64)[None, :] * 8, [32, 32])
        image = tf.cast(tf.stack([first, 255 - first, column], axis=-1), tf.uint8)
        return {'image': tf.io.encode_png(image), 'label': i % 10, 'id': tf.as_string(i)}

    start = instruction.from_ or 0  # None at a split's ends.
    end = (
        self.info.splits[instruction.splitname].num_examples
        if instruction.to is None
        else instruction.to
    )
    return tf.data.Dataset.range(start, end).map(example)


@pytest.fixture(scope='module')
def cifar10_metadata(tmp_path_factory):
    """A TFDS data_dir holding only cifar10's metadata: 40 train and 21 test examples."""
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    builder = tfds.builder('cifar10', data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name='cifar10', filetype_suffix='tfrecord'
    )
    splits = [
        tfds.core.SplitInfo(
            name=name, shard_lengths=[n], num_bytes=2500 * n, filename_template=template
        )
        for name, n in (('train', NUM_TRAIN), ('test', NUM_TEST))
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


@pytest.fixture
def cifar10(cifar10_metadata):
    """A config for the mocked cifar10; the mock is active for the test's duration."""
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=cifar10_metadata,
        as_dataset_fn=indexed_examples,
    ):
        c = config_lib.default_config()
        c.dataset.name = 'cifar10'
        c.dataset.augment = 'none'
        c.train.batch_size = 8
        c.train.eval_batch_size = 8
        yield c


def pixels(images, mean=CIFAR_MEAN, std=CIFAR_STD):
    """Undoes the normalisation: pixel values 0..255."""
    return (images * std + mean) * 255


def identities(batch):
    """Example index from the centre pixel (inside the image whatever the crop)."""
    return np.rint(pixels(batch['image'])[:, 16, 16, 0]).astype(int)


def test_train_batches_are_normalised_and_each_epoch_is_a_new_permutation(cifar10):
    ds = create_dataset(cifar10, 0, 1)
    assert (ds.name, ds.num_classes, ds.image_shape) == ('cifar10', 10, (32, 32, 3))
    assert (ds.num_train, ds.num_eval) == (NUM_TRAIN, NUM_TEST)
    batches = list(itertools.islice(ds.train_batches(0), 10))  # 80 examples: two epochs.
    batch = batches[0]
    assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
    p = pixels(batch['image'])
    np.testing.assert_allclose(p, np.rint(p), atol=1e-3)  # Per-channel constants undone exactly.
    np.testing.assert_allclose(p[..., 0] + p[..., 1], 255, atol=1e-3)
    np.testing.assert_allclose(
        p[..., 2], np.broadcast_to(np.arange(32) * 8, (8, 32, 32)), atol=1e-3
    )
    ids = np.concatenate([identities(b) for b in batches])
    labels = np.concatenate([b['label'] for b in batches])
    np.testing.assert_array_equal(labels, ids % 10)
    epoch0, epoch1 = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(NUM_TRAIN))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(NUM_TRAIN))
    assert not np.array_equal(epoch0, np.arange(NUM_TRAIN))  # Shuffled...
    assert not np.array_equal(epoch0, epoch1)  # ...differently each epoch.


def test_train_stream_is_deterministic_and_resumes_exactly(cifar10):
    cifar10.dataset.augment = 'cifar'
    cifar10.train.batch_size = 16  # Step 2 straddles epochs 0 and 1; step 3 is inside epoch 1.
    ds = create_dataset(cifar10, 0, 1)
    first = list(itertools.islice(ds.train_batches(0), 4))
    again = list(itertools.islice(ds.train_batches(0), 4))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    for step in (2, 3):
        resumed = next(ds.train_batches(step))
        np.testing.assert_array_equal(resumed['image'], first[step]['image'])
        np.testing.assert_array_equal(resumed['label'], first[step]['label'])
    ids = np.concatenate([identities(b) for b in first])
    np.testing.assert_array_equal(np.sort(ids[:NUM_TRAIN]), np.arange(NUM_TRAIN))
    # The augmentation acts: some crops show padding (exact zeros), some images are flipped.
    images = np.concatenate([b['image'] for b in first])
    padded = (images[:, :4] == 0).all(axis=(1, 2, 3)) | (images[:, -4:] == 0).all(axis=(1, 2, 3))
    flipped = images[:, 16, 20, 2] < images[:, 16, 12, 2]
    assert 0 < padded.sum() < len(images) and 0 < flipped.sum() < len(images)
    cifar10.seed = 1
    other_seed = next(create_dataset(cifar10, 0, 1).train_batches(0))
    assert not np.array_equal(other_seed['image'], first[0]['image'])
    cifar10.data_seed = 0  # data_seed, not seed, keys order and augmentation
    np.testing.assert_array_equal(next(create_dataset(cifar10, 0, 1).train_batches(0))['image'],
                                  first[0]['image'])  # fmt: skip


def test_processes_get_disjoint_shares(cifar10):
    whole = list(create_dataset(cifar10, 0, 1).eval_batches())
    assert len(whole) == 3 and sum(b['mask'].sum() for b in whole) == NUM_TEST
    mask = np.concatenate([b['mask'] for b in whole]) > 0
    np.testing.assert_array_equal(np.concatenate([identities(b) for b in whole])[mask], range(21))

    evals, train_ids = [], []
    for process in (0, 1):
        ds = create_dataset(cifar10, process, 2)
        assert (ds.num_train, ds.num_eval) == (NUM_TRAIN, NUM_TEST)
        batches = list(ds.eval_batches())
        assert all(b['image'].shape == (4, 32, 32, 3) for b in batches)  # Local batch: 8 / 2.
        mask = np.concatenate([b['mask'] for b in batches]) > 0
        evals.append((len(batches), mask.sum(), np.concatenate([identities(b) for b in batches])))
        padding = np.concatenate([b['image'] for b in batches])[~mask]
        assert (padding == 0).all()
        train = itertools.islice(ds.train_batches(0), NUM_TRAIN // 2 // 4)  # One epoch.
        train_ids.append(np.concatenate([identities(b) for b in train]))
    (batches0, real0, ids0), (batches1, real1, ids1) = evals
    assert batches0 == batches1 == 3  # ceil(11 / 4): both processes run the same loop.
    assert (real0, real1) == (11, 10)
    np.testing.assert_array_equal(ids0[:11], range(11))  # In order, each example once.
    np.testing.assert_array_equal(ids1[:10], range(11, 21))
    assert not set(train_ids[0]) & set(train_ids[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(train_ids)), range(NUM_TRAIN))


def test_share_matches_tfds_even_splits(cifar10_metadata):
    splits = tfds.builder('cifar10', data_dir=cifar10_metadata).info.splits
    for count, drop in itertools.product((1, 2, 3, 6), (False, True)):
        for index, split in enumerate(tfds.even_splits('test', count, drop_remainder=drop)):
            (absolute,) = split.to_absolute(splits)
            share = tfds_pipeline._share(NUM_TEST, index, count, drop)
            expected = (absolute.from_ or 0, NUM_TEST if absolute.to is None else absolute.to)
            assert share == expected, (count, drop, index)


def test_num_train_examples_limits_the_train_split(cifar10):
    cifar10.dataset.num_train_examples = 12
    ds = create_dataset(cifar10, 0, 1)
    ids = np.concatenate([identities(b) for b in itertools.islice(ds.train_batches(0), 3)])
    assert ds.num_train == 12
    np.testing.assert_array_equal(np.sort(ids[:12]), range(12))
    np.testing.assert_array_equal(np.sort(ids[12:]), range(12))


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    config = config_lib.default_config()
    config.dataset.data_dir = str(tmp_path)
    config.dataset.name = 'mnist'
    with pytest.raises(ValueError, match=r'mnist is not prepared.*tfds build mnist.*data_dir'):
        create_dataset(config, 0, 1)
    config.dataset.name = 'imagenet2012'
    with pytest.raises(ValueError, match='imagenet2012 needs a manual download'):
        create_dataset(config, 0, 1)


def make_folder(root, eval_split='test', sizes=((8, 8),), ext='png'):
    """root/{train,eval_split}/{cat,dog}/*.png: red channel 10 (cat) or 200 (dog)."""
    for split, per_class in (('train', 3), (eval_split, 2)):
        for label, red in (('cat', 10), ('dog', 200)):
            os.makedirs(root / split / label)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                pixel = np.array([red, 60, 90], np.uint8)
                Image.fromarray(np.tile(pixel, (h, w, 1))).save(root / split / label / f'{i}.{ext}')
    return root


def folder_config(root, augment='none'):
    c = config_lib.default_config()
    c.dataset.name = 'image_folder'
    c.dataset.data_dir = str(root)
    c.dataset.augment = augment
    c.dataset.loader = 'tfds'  # The tf.data path; tests/test_data_folder.py tests the numpy one.
    c.dataset.image_size = 16
    c.train.batch_size = 4
    c.train.eval_batch_size = 4
    return c


@pytest.mark.parametrize('eval_split', ['test', 'val'])
def test_image_folder(tmp_path, eval_split):
    ds = create_dataset(folder_config(make_folder(tmp_path, eval_split)), 0, 1)
    assert (ds.num_classes, ds.image_shape, ds.num_train, ds.num_eval) == (2, (8, 8, 3), 6, 4)
    batches = [next(ds.train_batches(0)), *ds.eval_batches()]
    assert len(batches) == 2 and batches[1]['mask'].sum() == 4
    for batch in batches:
        assert batch['image'].shape == (4, 8, 8, 3)
        red = pixels(batch['image'], FOLDER_MEAN, FOLDER_STD)[:, 0, 0, 0]
        np.testing.assert_allclose(red, np.where(batch['label'] == 0, 10, 200), atol=1e-3)


def test_image_folder_imagenet_augmentation_resizes_any_size(tmp_path):
    make_folder(tmp_path, sizes=((8, 8), (20, 12)), ext='jpg')  # JPEG: decode-and-crop path.
    ds = create_dataset(folder_config(tmp_path, augment='imagenet'), 0, 1)
    assert ds.image_shape == (16, 16, 3)
    for batch in (next(ds.train_batches(0)), next(ds.eval_batches())):
        assert batch['image'].shape == (4, 16, 16, 3)
        red = pixels(batch['image'], FOLDER_MEAN, FOLDER_STD)[..., 0].mean(axis=(1, 2))
        np.testing.assert_allclose(red, np.where(batch['label'] == 0, 10, 200), atol=6)


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match='missing.*does not exist'):
        create_dataset(folder_config(tmp_path / 'missing'), 0, 1)
    with pytest.raises(ValueError, match=f'{tmp_path}.*no images under'):
        create_dataset(folder_config(tmp_path), 0, 1)
    os.makedirs(tmp_path / 'train' / 'cat')
    with pytest.raises(ValueError, match=f'no images under {tmp_path / "train"}'):
        create_dataset(folder_config(tmp_path), 0, 1)


def test_image_folder_says_what_it_skips_and_refuses_one_class(tmp_path, caplog):
    make_folder(tmp_path)
    deeper = tmp_path / 'train' / 'cat' / 'extra'
    os.makedirs(deeper)
    for i in range(4):  # One level too deep: ImageFolder never reads these.
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(deeper / f'{i}.png')
    (tmp_path / 'train' / 'dog' / 'notes.txt').write_text('not an image')
    (tmp_path / 'test' / 'loose.png').write_bytes(b'')
    with caplog.at_level('WARNING'):
        ds = create_dataset(folder_config(tmp_path), 0, 1)
    assert (ds.num_train, ds.num_eval) == (6, 4)
    (message,) = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
    assert '6 file(s) skipped' in message, message
    assert '4 in a folder below <split>/<label>/' in message
    assert '1 not named .jpg/.jpeg/.png' in message and 'notes.txt' in message
    assert '1 directly in test/' in message

    one = tmp_path / 'one'
    for split in ('train', 'test'):
        os.makedirs(one / split / 'cat')
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / split / 'cat' / '0.png')
    with pytest.raises(ValueError, match=r'has 1 class.*at least two'):
        create_dataset(folder_config(one), 0, 1)


@pytest.mark.parametrize('lazy', [False, True])
@pytest.mark.parametrize('content', [b'not an image', b'\x89PNG\r\n\x1a\n truncated'])
def test_image_folder_bad_file_is_named(tmp_path, monkeypatch, lazy, content):
    make_folder(tmp_path)
    (tmp_path / 'train' / 'dog' / 'bad.png').write_bytes(content)
    config = folder_config(tmp_path, augment='imagenet' if lazy else 'none')
    if lazy:  # As for a big folder: no PIL pass at creation; the first read must fail clearly.
        monkeypatch.setattr(tfds_pipeline, 'EAGER_CHECK_MAX_FILES', 0)
        ds = create_dataset(config, 0, 1)
        with pytest.raises(ValueError, match=r'image file .*train/dog/bad\.png'):
            list(itertools.islice(ds.train_batches(0), 2))  # 7 images: batch 2 reads all.
    else:
        with pytest.raises(ValueError, match=r'image file .*train/dog/bad\.png cannot be read'):
            create_dataset(config, 0, 1)


@pytest.mark.parametrize('lazy', [False, True])
def test_image_folder_size_mismatch_is_named(tmp_path, monkeypatch, lazy):
    make_folder(tmp_path, sizes=((8, 8), (8, 8), (9, 8)))
    config = folder_config(tmp_path)
    if lazy:  # The first file sets the size; the map names the first file that differs.
        monkeypatch.setattr(tfds_pipeline, 'EAGER_CHECK_MAX_FILES', 0)
        ds = create_dataset(config, 0, 1)
        with pytest.raises(ValueError, match=r'image file .*\.png: image is not (8x8|9x8) like'):
            list(itertools.islice(ds.train_batches(0), 2))
    else:
        with pytest.raises(ValueError, match=r'\.png is (9x8, not 8x8|8x8, not 9x8).*=imagenet'):
            create_dataset(config, 0, 1)


def test_two_training_steps_end_to_end_on_mock_cifar10(cifar10, tmp_path):
    from resjax import models, objective, train
    from resjax.metrics import read_metrics

    c = cifar10
    c.dataset.augment = 'cifar'
    c.model.depth, c.model.width = 8, 0.25
    c.train.steps, c.train.log_every_steps = 2, 1
    c.train.eval_every_steps = c.train.checkpoint_every_steps = 2
    state = train.train_and_evaluate(c, str(tmp_path))
    assert int(state.step) == 2
    rows = read_metrics(str(tmp_path))
    assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2]
    (ev,) = [r for r in rows if 'eval/accuracy' in r]
    # The 21 mocked test images, each once, rebuilt here from the mock's formula and run
    # through the final model (BN eval mode): the same loss and accuracy as the eval loop's.
    i = np.arange(NUM_TEST)[:, None, None]
    column = np.broadcast_to(np.arange(32) * 8, (NUM_TEST, 32, 32))
    first = np.broadcast_to(i, column.shape)
    raw = np.stack([first, 255 - first, column], axis=-1)
    images = (raw / 255 - CIFAR_MEAN) / CIFAR_STD
    labels = np.arange(NUM_TEST) % 10
    logits = models.create_model(c.model, 10).apply(
        {'params': state.params, 'batch_stats': state.batch_stats},
        images.astype(np.float32),
        train=False,
    )
    np.testing.assert_allclose(ev['eval/accuracy'], np.mean(logits.argmax(-1) == labels))
    loss = np.mean(objective.cross_entropy(logits, labels))
    np.testing.assert_allclose(ev['eval/loss'], loss, rtol=1e-5)


def test_image_folder_listing_is_tfds_imagefolders(tmp_path):
    # Same examples, order and label ids as tfds.folder_dataset.ImageFolder: the numpy and
    # tf.data loaders read one list, and checkpoints move between them.
    from resjax.data import image_folder

    make_folder(tmp_path, eval_split='val')
    os.makedirs(tmp_path / 'val' / 'ant')  # A label only the eval split has (no images).
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'train' / 'dog' / 'X.JPG')
    ours = image_folder.list_folder(str(tmp_path))
    builder = tfds.folder_dataset.ImageFolder(str(tmp_path))
    assert ours.label_names == tuple(builder.info.features['label'].names) == ('ant', 'cat', 'dog')
    theirs = builder._split_examples  # noqa: SLF001
    for split, files, labels in (
        ('train', ours.train_files, ours.train_labels),
        ('val', ours.eval_files, ours.eval_labels),
    ):
        assert list(files) == [ex.image_path for ex in theirs[split]]
        ids = builder.info.features['label'].str2int
        assert labels.tolist() == [ids(ex.label) for ex in theirs[split]]
