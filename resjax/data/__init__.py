"""Input pipelines. The only place that imports TensorFlow / TFDS, and only lazily.

Every dataset is a `Dataset`: metadata plus two iterator factories that yield host-local
NumPy batches `{'image': float32 NHWC, 'label': int32}`:

- `train_batches(start_step)`: the infinite training stream from `start_step` on. The batch of
  step `s` is a pure function of `(data_seed(config), s)` (`config.data_seed`, or `seed` when
  it is None), so a resumed run sees exactly the batches the uninterrupted run would have
  seen; the data position is the step.
- `eval_batches()`: every eval example exactly once, the last batch padded and marked by
  `'mask'` (1.0 real, 0.0 padding); every process yields the same number of batches.

`digits` (scikit-learn's bundled 8x8 handwritten digits), `synthetic` and image folders that
fit in memory (`image_folder`, decoded once with PIL: `resjax.data.image_folder`) need no
TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]

IN_MEMORY = ('digits', 'synthetic')
TFDS_DATASETS = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'imagenet2012', 'image_folder')
DATASETS = IN_MEMORY + TFDS_DATASETS


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset as the training loop sees it. Batch sizes are per process (host)."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_eval: int
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: Callable[[], Iterator[Batch]]


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the training data's order and augmentation: `config.data_seed`, or
    `config.seed` when it is None (so a run without one sees the batches it always saw)."""
    return config.seed if config.data_seed is None else config.data_seed


def create_dataset(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Dataset:
    """Builds the dataset named by `config.dataset.name` for this process's share of the data.

    Raises ValueError with a one-line message for an unknown name, a missing TFDS dataset or a
    bad image folder, before anything is compiled.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    name = config.dataset.name
    if name not in DATASETS:
        raise ValueError(f'dataset.name={name!r} is unknown; use one of {DATASETS}')
    for key in ('batch_size', 'eval_batch_size'):
        if config.train[key] % process_count:
            raise ValueError(
                f'train.{key}={config.train[key]} does not divide by the {process_count} '
                'processes; pick a multiple'
            )
    if name == 'digits':
        images, labels, test_images, test_labels = load_digits()
        num_classes = 10
    elif name == 'synthetic':
        images, labels, test_images, test_labels = synthetic_arrays(config.dataset)
        num_classes = config.dataset.num_classes
    elif name == 'image_folder':
        from resjax.data import image_folder  # Lazy: it may import TensorFlow (big folders).

        return image_folder.create_dataset(config, process_index, process_count)
    else:
        from resjax.data import tfds_pipeline  # Lazy: TensorFlow is heavy and optional.

        return tfds_pipeline.create_dataset(config, process_index, process_count)
    if config.dataset.num_train_examples:
        keep = config.dataset.num_train_examples
        images, labels = images[:keep], labels[:keep]
    return array_dataset(
        name,
        images,
        labels,
        test_images,
        test_labels,
        num_classes,
        config,
        process_index,
        process_count,
    )


def load_digits(test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """scikit-learn's 1,797 8x8 digits as NHWC float32, split train/test deterministically.

    The split is stratified with a fixed permutation (independent of the run's seed) so every
    run is evaluated on the same 359 test images. Pixels (0..16) are standardised with the
    training set's mean and std.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # Ships the data; no network.

    x, y = sk_load_digits(return_X_y=True)
    x = x.reshape(-1, 8, 8, 1).astype(np.float32)
    y = y.astype(np.int32)
    rng = np.random.default_rng(20151210)  # The ResNet paper's arXiv date: fixed forever.
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(len(idx) * test_fraction)]] = True
    mean, std = x[~test].mean(), x[~test].std()
    x = (x - mean) / std
    return x[~test], y[~test], x[test], y[test]


def synthetic_arrays(dataset: ml_collections.ConfigDict) -> tuple[np.ndarray, ...]:
    """Random Gaussian images with random labels, for benchmarks and TensorFlow-free tests."""
    rng = np.random.default_rng(0)
    shape = tuple(dataset.image_shape)
    n_train, n_test = dataset.num_train_examples or 1024, 256
    images = rng.standard_normal((n_train + n_test, *shape), dtype=np.float32)
    labels = rng.integers(0, dataset.num_classes, n_train + n_test).astype(np.int32)
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def array_dataset(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
    train_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    eval_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Dataset:
    """A `Dataset` over in-memory arrays: each epoch a fresh permutation keyed by
    (data_seed(config), epoch).

    `train_transform(images, step)` maps this process's rows of step `step`'s batch to the
    float32 images the model sees (augmentation, normalisation); `eval_transform(images)` the
    eval batches' rows. Without them the arrays are batched as stored.
    """
    if images.ndim != 4 or test_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            f'dataset {name}: images must be (height, width, channels) arrays, got train '
            f'{images.shape[1:]} and eval {test_images.shape[1:]}; for synthetic data set '
            '--config.dataset.image_shape to three numbers, e.g. "(32, 32, 3)"'
        )
    global_batch = config.train.batch_size
    local_batch = global_batch // process_count
    n = len(images)
    seed = data_seed(config)

    def train_batches(start_step: int) -> Iterator[Batch]:
        step = start_step
        perms: dict[int, np.ndarray] = {}
        while True:
            # Global positions of this step's examples in the concatenated epoch stream.
            pos = step * global_batch + process_index * local_batch + np.arange(local_batch)
            epochs, offsets = np.divmod(pos, n)
            perms = {e: perms.get(e) for e in np.unique(epochs).tolist()}
            for e, perm in perms.items():
                if perm is None:
                    perms[e] = np.random.default_rng([seed, e]).permutation(n)
            idx = np.array([perms[e][o] for e, o in zip(epochs, offsets)])
            image = images[idx] if train_transform is None else train_transform(images[idx], step)
            yield {'image': image, 'label': labels[idx]}
            step += 1

    def eval_batches() -> Iterator[Batch]:
        yield from padded_batches(
            test_images,
            test_labels,
            config.train.eval_batch_size,
            process_index,
            process_count,
            eval_transform,
        )

    return Dataset(
        name,
        num_classes,
        tuple(images.shape[1:]),
        n,
        len(test_images),
        train_batches,
        eval_batches,
    )


def padded_batches(
    images: np.ndarray,
    labels: np.ndarray,
    global_batch: int,
    process_index: int,
    process_count: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[Batch]:
    """Every example once, in order, through `transform` if given; the tail padded with zeros
    and `mask` 0.

    All processes yield the same number of batches (a collective per batch must never hang).
    """
    local_batch = global_batch // process_count
    num_batches = -(-len(images) // global_batch)
    for b in range(num_batches):
        start = b * global_batch + process_index * local_batch
        idx = np.arange(start, start + local_batch)
        mask = (idx < len(images)).astype(np.float32)
        idx = np.minimum(idx, len(images) - 1)
        image = images[idx] if transform is None else transform(images[idx])
        image = image * mask[:, None, None, None]
        yield {'image': image, 'label': labels[idx] * (mask > 0), 'mask': mask}
