"""tf.data pipelines for TFDS datasets and local image folders (imported lazily: TensorFlow).

Each process reads its own contiguous share of a split (`tfds.even_splits` arithmetic, with the
explicit process index/count): train shares drop the remainder so every process has the same
`n` examples and epochs stay in lockstep; eval shares keep every example.

Train stream (one per process). Position `t` of the stream is example `t mod n` of epoch
`t // n`; the batch of step `s` is positions `[s*b, (s+1)*b)` (`b` = local batch), so batches
straddle epoch boundaries and no example is dropped. Epoch `e`'s order is a seeded tf.data
shuffle keyed by `(data_seed, process_index, e)` (`resjax.data.data_seed`); each example's
augmentation draws from stateless ops keyed by `(data_seed, process_index, e, index in
epoch)`, so parallel maps cannot change it. A run resumed at step `s` starts at epoch
`s*b // n` and skips `s*b mod n` still-encoded examples: it sees exactly the batches the
uninterrupted run saw (same TensorFlow version, same config).
Shares that fit in memory (<= 1 GiB encoded) are cached and shuffled completely each epoch;
larger ones (ImageNet) stream through a `dataset.shuffle_buffer`-sized buffer. Resuming a
streamed dataset mid-epoch reads (without decoding) the skipped part of the epoch again.

Images are normalised per channel with the dataset's mean/std (pixel values in [0, 1]).
Augmentations (`dataset.augment`):
- 'cifar': zero-pad 4 pixels (in normalised space, i.e. with the mean colour, as
  fb.resnet.torch did), random 32x32 crop, random horizontal flip (He et al. 2015, section 4.2).
- 'imagenet': Inception-style random-resized crop (area 8%-100%, aspect 3/4-4/3) to
  `dataset.image_size` and flip; eval takes the central 224/256 of the shorter side and resizes
  it to `image_size` (= resize the shorter side to image_size*256/224, then center-crop).
- 'none': the image as stored.

An image folder is `root/<split>/<label>/<image>` as `resjax.data.image_folder` lists it
(ImageFolder's rules; folders that fit in memory skip tf.data unless `dataset.loader='tfds'`);
RGB; normalised with ImageNet's constants.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Before TF loads: hides its INFO banner.

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from resjax.data import Batch, Dataset, data_seed, image_folder  # noqa: E402

try:  # tf.data must never take accelerator memory from JAX.
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF's devices were already initialised elsewhere; nothing to hide now.
    pass

# Per-channel (mean, std) of pixel values in [0, 1], from each training set.
NORMALIZATION = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'image_folder': (image_folder.MEAN, image_folder.STD),
}
EVAL_SPLITS = {'cifar10': 'test', 'cifar100': 'test', 'mnist': 'test', 'fashion_mnist': 'test'}
CACHE_MAX_BYTES = 1 << 30  # Encoded share size up to which a split is cached in memory.
EAGER_CHECK_MAX_FILES = 10_000  # Image folders up to this size are validated file by file.
SEARCH_MAX_FILES = 100_000  # After a decode error, folders up to this size are searched for it.
CIFAR_PAD = 4
IMAGENET_CROP_FRACTION = 224 / 256


@dataclasses.dataclass(frozen=True)
class _Split:
    """One split of a source: `read(start, end)` yields (encoded image, label, file name)."""

    num_examples: int
    num_bytes: int  # Encoded size; 0 if unknown (then never cached).
    read: Callable[[int, int], tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    num_classes: int
    channels: int
    stored_size: tuple[int, int] | None  # (height, width) if every image has it, else None.
    train: _Split
    eval: _Split
    files: tuple[str, ...] = ()  # Image folders: every file, to name a bad one on failure.


def create_dataset(
    config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
    folder: image_folder.Folder | None = None,
) -> Dataset:
    """This process's share of `config.dataset.name` (of `folder`, listed, for an image folder);
    see the module docstring.

    Raises ValueError (one line) for a dataset that is not prepared, a bad image folder or an
    augmentation the images cannot take, before any batch is read.
    """
    d = config.dataset
    if d.augment not in ('cifar', 'imagenet', 'none'):
        raise ValueError(f"dataset.augment={d.augment!r}: use 'cifar', 'imagenet' or 'none'")
    if d.name == 'image_folder':
        source = _image_folder(folder or image_folder.list_folder(d.data_dir), d.augment)
    else:
        source = _tfds_source(d)
    if d.augment == 'imagenet':
        height = width = d.image_size
    elif source.stored_size is None:
        raise ValueError(
            f"{d.name}'s images vary in size: use --config.dataset.augment=imagenet "
            '(random-resized crops to dataset.image_size)'
        )
    else:
        height, width = source.stored_size
    image_shape = (height, width, source.channels)
    mean, std = NORMALIZATION[d.name]
    if source.channels == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3

    num_train = source.train.num_examples
    if d.num_train_examples:
        num_train = min(num_train, d.num_train_examples)
    train_start, train_end = _share(num_train, process_index, process_count, drop_remainder=True)
    if train_end == train_start:
        raise ValueError(
            f'{d.name}: {num_train} training examples cannot be shared by {process_count} processes'
        )
    eval_start, eval_end = _share(source.eval.num_examples, process_index, process_count, False)
    preprocess = _Preprocess(
        d.augment,
        image_shape,
        mean,
        std,
        data_seed(config),
        process_index,
        source.stored_size,
    )
    on_error = _error_naming_file(source.files)

    def train_batches(start_step: int) -> Iterator[Batch]:
        ds = _train_stream(
            source.train, train_start, train_end, start_step, config, process_count, preprocess
        )
        return _numpy_batches(ds, on_error)

    def eval_batches() -> Iterator[Batch]:
        ds = _eval_stream(
            source.eval, eval_start, eval_end, config, process_count, preprocess, image_shape
        )
        return _numpy_batches(ds, on_error)

    return Dataset(
        name=d.name,
        num_classes=source.num_classes,
        image_shape=image_shape,
        num_train=(train_end - train_start) * process_count,
        num_eval=source.eval.num_examples,
        train_batches=train_batches,
        eval_batches=eval_batches,
    )


def _share(num_examples: int, index: int, count: int, drop_remainder: bool) -> tuple[int, int]:
    """[start, end) of process `index`'s share: `tfds.even_splits`' arithmetic."""
    per_process = num_examples // count
    start, end = per_process * index, per_process * (index + 1)
    if not drop_remainder:
        remainder = num_examples % count
        start, end = start + min(index, remainder), end + min(index + 1, remainder)
    return start, end


# ---------------------------------------------------------------- sources


def _tfds_source(d: ml_collections.ConfigDict) -> _Source:
    """A TFDS dataset that is already prepared in `d.data_dir` (resjax never downloads)."""
    builder = tfds.builder(d.name, data_dir=d.data_dir or None)
    if not builder.is_prepared():
        root = builder.data_dir_root
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # ImageNet: no public download URL.
            how = (
                f'{d.name} needs a manual download (see tfds.builder({d.name!r})'
                f'.MANUAL_DOWNLOAD_INSTRUCTIONS): put its archives in {root}/downloads/manual and '
                f'run `tfds build {d.name} --data_dir={root}`'
            )
        else:
            how = (
                f'run `tfds build {d.name} --data_dir={root}` (or `tfds.builder({d.name!r})'
                '.download_and_prepare()`) on a machine with network'
            )
        raise ValueError(
            f'dataset {d.name} is not prepared in {root} (no {builder.data_dir}) and resjax '
            f'does not download: {how}, or set --config.dataset.data_dir to a directory that '
            'holds it'
        )
    image = builder.info.features['image']
    height, width, channels = image.shape
    splits = builder.info.splits

    def split(name: str, in_order: bool) -> _Split:
        # A single reader per share keeps eval in the split's order; train reads several files
        # at once (TFDS interleaves them deterministically when shuffle_files=False).
        read_config = tfds.ReadConfig(try_autocache=False, skip_prefetch=True)
        if in_order:
            read_config.interleave_cycle_length = 1

        def read(start: int, end: int) -> tf.data.Dataset:
            ds = builder.as_dataset(
                split=f'{name}[{start}:{end}]',
                shuffle_files=False,
                decoders={'image': tfds.decode.SkipDecoding()},  # Decode after skip/shuffle.
                read_config=read_config,
            )
            return ds.map(lambda ex: (ex['image'], ex['label'], tf.constant('')))

        return _Split(splits[name].num_examples, splits[name].num_bytes, read)

    eval_split = EVAL_SPLITS.get(d.name, 'validation')
    return _Source(
        name=d.name,
        num_classes=builder.info.features['label'].num_classes,
        channels=channels,
        stored_size=None if height is None or width is None else (height, width),
        train=split('train', in_order=False),
        eval=split(eval_split, in_order=True),
    )


def _image_folder(folder: image_folder.Folder, augment: str) -> _Source:
    """The listed folder's files, read by tf.data; small folders checked up front with PIL."""
    files = folder.train_files + folder.eval_files
    stored_size, num_bytes = None, 0
    if len(files) <= EAGER_CHECK_MAX_FILES:
        stored_size, num_bytes = _check_images(files, same_size=augment != 'imagenet')
    elif augment != 'imagenet':  # Larger folders: one file sets the size, maps check the rest.
        try:
            first = tf.io.decode_image(tf.io.read_file(files[0]), 3, expand_animations=False)
        except tf.errors.OpError as e:
            raise ValueError(f'image file {files[0]} cannot be read: {e.message}') from None
        stored_size = tuple(first.shape[:2])

    def split(paths: tuple[str, ...], labels: np.ndarray) -> _Split:
        def read(start: int, end: int) -> tf.data.Dataset:
            ds = tf.data.Dataset.from_tensor_slices(
                (list(paths[start:end]), labels[start:end].astype(np.int64))
            )
            return ds.map(lambda path, label: (tf.io.read_file(path), label, path))

        return _Split(len(paths), num_bytes * len(paths) // len(files), read)

    return _Source(
        name='image_folder',
        num_classes=len(folder.label_names),
        channels=3,
        stored_size=stored_size,
        train=split(folder.train_files, folder.train_labels),
        eval=split(folder.eval_files, folder.eval_labels),
        files=files,
    )


def _check_images(files: tuple[str, ...], same_size: bool) -> tuple[tuple[int, int], int]:
    """Decodes every image with PIL: the first one's (height, width) and the total bytes.

    Names the first file that cannot be decoded, or (`same_size`) that differs in size from the
    first file, since only the 'imagenet' augmentation resizes.
    """
    first_size, num_bytes = None, 0
    for path in files:
        size = image_folder.read_image(path).shape[:2]
        first_size = first_size or size
        if same_size:
            image_folder.check_size(path, size, files[0], first_size)
        num_bytes += os.path.getsize(path)
    return first_size, num_bytes


def _unreadable(path: str) -> str | None:
    """Why PIL cannot decode the image at `path` (a one-line message naming it), or None."""
    try:
        image_folder.read_image(path)
    except ValueError as e:
        return str(e)
    return None


def _error_naming_file(files: tuple[str, ...]) -> Callable[[tf.errors.OpError], ValueError]:
    """Turns a tf.data failure into a one-line ValueError naming the bad image file if any."""

    def on_error(error: tf.errors.OpError) -> ValueError:
        # Drop TF's '{{function_node ...}}' prefix: the rest is the reason.
        message = re.sub(r'\{\{.*?\}\}\s*', '', error.message or str(error)).strip()
        message = message.splitlines()[0] if message else type(error).__name__
        # The checks in the map name the file: 'assertion failed: [reason:] [path]'.
        if named := re.search(r'assertion failed: \[(.*?):?\] \[(.*?)\]', message):
            return ValueError(f'image file {named[2]}: {named[1]}')
        # TF's decode errors do not name the file: find it with PIL.
        if len(files) <= SEARCH_MAX_FILES:  # Bigger folders: too slow to search.
            for path in files:
                if (bad := _unreadable(path)) is not None:
                    return ValueError(bad)
        return ValueError(f'reading the dataset failed: {message}')

    return on_error


# ---------------------------------------------------------------- streams


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # Parallel maps keep the input order: batches are reproducible.
    options.threading.max_intra_op_parallelism = 1
    return options


def _train_stream(
    split: _Split,
    start: int,
    end: int,
    start_step: int,
    config: ml_collections.ConfigDict,
    process_count: int,
    preprocess: _Preprocess,
) -> tf.data.Dataset:
    n = end - start
    local_batch = config.train.batch_size // process_count
    start_epoch, offset = divmod(start_step * local_batch, n)
    examples = split.read(start, end)
    in_memory = 0 < split.num_bytes * n // split.num_examples <= CACHE_MAX_BYTES
    if in_memory:
        examples = examples.cache()  # Filled by the first epoch; encoded bytes only.
    buffer = n if in_memory else min(n, config.dataset.shuffle_buffer)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        key = preprocess.epoch_key(e)
        seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        ds = examples.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
        return ds.enumerate().map(lambda i, ex: (e, i, *ex))

    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.skip(offset)  # Still encoded: resuming does not decode the skipped examples.
    ds = ds.map(preprocess.train, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _eval_stream(
    split: _Split,
    start: int,
    end: int,
    config: ml_collections.ConfigDict,
    process_count: int,
    preprocess: _Preprocess,
    image_shape: tuple[int, int, int],
) -> tf.data.Dataset:
    local_batch = config.train.eval_batch_size // process_count
    # Every process runs as many batches as the largest share needs (shares differ by <= 1).
    largest_share = -(-split.num_examples // process_count)
    num_batches = -(-largest_share // local_batch)
    ds = split.read(start, end).map(preprocess.eval, num_parallel_calls=tf.data.AUTOTUNE)
    padding = {
        'image': tf.zeros(image_shape, tf.float32),
        'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32),
    }
    num_padding = num_batches * local_batch - (end - start)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _numpy_batches(
    ds: tf.data.Dataset, on_error: Callable[[tf.errors.OpError], ValueError]
) -> Iterator[Batch]:
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise on_error(e) from None
        yield batch


# ---------------------------------------------------------------- per-example transforms


@dataclasses.dataclass(frozen=True)
class _Preprocess:
    """Decoding, augmentation and normalisation of one example (traced by tf.data)."""

    augment: str
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    process_index: int
    stored_size: tuple[int, int] | None

    def epoch_key(self, epoch: tf.Tensor) -> tf.Tensor:
        key = tf.constant([self.seed, self.process_index], tf.int64)
        return tf.random.experimental.stateless_fold_in(key, epoch)

    def train(self, epoch, index, encoded, label, path) -> dict[str, tf.Tensor]:
        encoded = _checked(encoded, path)
        key = tf.random.experimental.stateless_fold_in(self.epoch_key(epoch), index)
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        if self.augment == 'imagenet':
            image = self._normalize(self._random_resized_crop(encoded, crop_key))
        else:
            image = self._normalize(self._decode(encoded, path))
        if self.augment == 'cifar':
            p = CIFAR_PAD
            image = tf.pad(image, [[p, p], [p, p], [0, 0]])  # 0 = the mean colour.
            image = tf.image.stateless_random_crop(image, self.image_shape, seed=crop_key)
        if self.augment in ('cifar', 'imagenet'):
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        return {'image': image, 'label': tf.cast(label, tf.int32)}

    def eval(self, encoded, label, path) -> dict[str, tf.Tensor]:
        encoded = _checked(encoded, path)
        if self.augment == 'imagenet':
            image = self._center_crop(encoded)
        else:
            image = self._decode(encoded, path)
        return {
            'image': self._normalize(image),
            'label': tf.cast(label, tf.int32),
            'mask': tf.constant(1.0, tf.float32),
        }

    def _decode(self, encoded: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
        """The stored image, checked against the dataset's size (the message names the file)."""
        channels = self.image_shape[-1]
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        height, width = self.stored_size
        same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        message = [f'image is not {height}x{width} like the others:', path]
        with tf.control_dependencies([tf.debugging.Assert(same_size, message)]):
            return tf.ensure_shape(image, (height, width, channels))

    def _random_resized_crop(self, encoded: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """Inception-style crop: 8%-100% of the area, aspect 3/4-4/3, resized to image_size."""
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            _image_size(encoded, self.image_shape[-1]),
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            seed=key,
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return self._resize(_decode_window(encoded, window, self.image_shape[-1]))

    def _center_crop(self, encoded: tf.Tensor) -> tf.Tensor:
        """The central 224/256 of the shorter side, resized to image_size."""
        hw = _image_size(encoded, self.image_shape[-1])[:2]
        side = tf.cast(IMAGENET_CROP_FRACTION * tf.cast(tf.reduce_min(hw), tf.float32), tf.int32)
        offset = (hw - side + 1) // 2
        window = tf.stack([offset[0], offset[1], side, side])
        return self._resize(_decode_window(encoded, window, self.image_shape[-1]))

    def _resize(self, image: tf.Tensor) -> tf.Tensor:
        image = tf.image.resize(image, self.image_shape[:2], method='bicubic', antialias=True)
        return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), self.image_shape)

    def _normalize(self, image: tf.Tensor) -> tf.Tensor:
        image = tf.cast(image, tf.float32) / 255.0
        return (image - tf.constant(self.mean)) / tf.constant(self.std)


def _checked(encoded: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """`encoded`, failing first, naming the file, if it is neither JPEG nor PNG (empty, text...)."""
    is_png = tf.equal(tf.strings.substr(encoded, 0, 8), b'\x89PNG\r\n\x1a\n')
    is_image = tf.logical_or(tf.io.is_jpeg(encoded), is_png)
    with tf.control_dependencies(
        [tf.debugging.Assert(is_image, ['not a JPEG or PNG image:', path])]
    ):
        return tf.identity(encoded)


def _image_size(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """[height, width, channels] without decoding a JPEG's pixels."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.extract_jpeg_shape(encoded),
        lambda: tf.shape(tf.io.decode_image(encoded, channels, expand_animations=False)),
    )


def _decode_window(encoded: tf.Tensor, window: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes only the window [y, x, height, width] of a JPEG (faster); any image otherwise."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.decode_and_crop_jpeg(encoded, window, channels=channels),
        lambda: tf.image.crop_to_bounding_box(
            tf.io.decode_image(encoded, channels, expand_animations=False), *tf.unstack(window)
        ),
    )
