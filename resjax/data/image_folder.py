"""Image folders `root/<split>/<label>/<image>`, listed, checked and (if they fit) decoded once
into memory without TensorFlow.

Listing follows `tfds.folder_dataset.ImageFolder` to the letter, so both loaders read the same
examples in the same order with the same label ids (checkpoints are interchangeable): split and
label folders are the directories of `root` and of each split; a label's images are its
`.jpg/.jpeg/.png` files (any case), sorted by name; each split's list is then shuffled by
`random.Random(split name)`; label ids are the sorted label names of all splits. The train split
is 'train', the eval split 'test', else 'validation', else 'val'. Files not read are counted in
one warning that says why, with an example path.

`dataset.loader` picks how the images are read:
- 'numpy' decodes every image once with PIL (grayscale and RGBA converted to RGB) into a uint8
  array, cached as `.npy` under `dataset.cache_dir` (default `~/.cache/resjax/image_folder`),
  one file per split keyed by the image files' paths, sizes and modification times: a changed
  folder is decoded again. Batches come from `array_dataset` (an epoch is a permutation keyed by
  (data_seed, epoch), `resjax.data.data_seed`); the 'cifar' augmentation (the tf.data path's:
  pad 4 with the mean colour, random crop, random flip) is drawn per batch from (data_seed,
  step), for the global batch, so a resumed run and any process count see the same images.
  Augmentations 'cifar' and 'none'.
- 'tfds' is the tf.data pipeline (`tfds_pipeline`): any size of folder, and 'imagenet'
  augmentation (random-resized crops of images of any size); needs TensorFlow.
- 'auto' (the default) is 'numpy' unless the augmentation is 'imagenet' or the decoded images
  would take more than `IN_MEMORY_MAX_BYTES`.

Pixels are normalised per channel with ImageNet's mean and std (of values in [0, 1]), as in the
tf.data path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import random
import time
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from absl import logging

if TYPE_CHECKING:
    from resjax.data import Dataset

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # ImageFolder's, compared in lower case.
EVAL_SPLITS = ('test', 'validation', 'val')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, of pixels in [0, 1].
CIFAR_PAD = 4
IN_MEMORY_MAX_BYTES = 4 << 30  # 'auto' decodes up to this many bytes (CIFAR-10: 184 MB).
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'resjax', 'image_folder')
LOADERS = ('auto', 'numpy', 'tfds')
CACHE_VERSION = 1  # Part of every cache key: bump it when the decoded format changes.


@dataclasses.dataclass(frozen=True)
class Folder:
    """An image folder's examples as ImageFolder lists them. Labels are ids into `label_names`."""

    root: str
    label_names: tuple[str, ...]
    eval_split: str
    train_files: tuple[str, ...]
    train_labels: np.ndarray  # int32
    eval_files: tuple[str, ...]
    eval_labels: np.ndarray  # int32


def list_folder(root: str) -> Folder:
    """Lists `root/<split>/<label>/<image>` as `tfds.folder_dataset.ImageFolder` does.

    Raises ValueError (one line, naming the folder) if `root` is missing, has no train or eval
    images, or fewer than two classes; logs one warning counting the files it skips.
    """
    if not root or not os.path.isdir(root):
        raise ValueError(
            f'image folder {root!r} does not exist: set --config.dataset.data_dir to a folder '
            'holding <split>/<label>/<image> files'
        )
    examples: dict[str, list[tuple[str, str]]] = {}
    labels: set[str] = set()
    for split in sorted(_folders(root)):
        for label in sorted(_folders(os.path.join(root, split))):
            labels.add(label)
            directory = os.path.join(root, split, label)
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
            paths = [os.path.join(directory, name) for name in sorted(names)]
            examples.setdefault(split, []).extend((path, label) for path in paths)
    for split, split_examples in examples.items():
        random.Random(split).shuffle(split_examples)  # ImageFolder's deterministic shuffle.
    examples = {split: v for split, v in examples.items() if v}
    if 'train' not in examples:
        raise ValueError(
            f'image folder {root} has no images under {os.path.join(root, "train")}/<label>/ '
            f'(found splits with images: {sorted(examples)}); expected .jpg/.jpeg/.png files'
        )
    eval_split = next((s for s in EVAL_SPLITS if s in examples), None)
    if eval_split is None:
        raise ValueError(
            f'image folder {root} has no eval split with images: add one of '
            f'{list(EVAL_SPLITS)} beside train/'
        )
    label_names = tuple(sorted(labels))
    if len(label_names) < 2:
        raise ValueError(
            f'image folder {root} has {len(label_names)} class ({list(label_names)}): a '
            'classifier needs at least two <label>/ folders under train/'
        )
    ids = {name: i for i, name in enumerate(label_names)}

    def split_arrays(split: str) -> tuple[tuple[str, ...], np.ndarray]:
        paths = tuple(path for path, _ in examples[split])
        return paths, np.array([ids[label] for _, label in examples[split]], np.int32)

    train, test = split_arrays('train'), split_arrays(eval_split)
    folder = Folder(root, label_names, eval_split, *train, *test)
    _warn_skipped(root, ('train', eval_split), {*folder.train_files, *folder.eval_files})
    return folder


def _folders(directory: str) -> list[str]:
    with os.scandir(directory) as entries:
        return [e.name for e in entries if e.is_dir()]  # Follows links, as os.path.isdir.


def _warn_skipped(root: str, splits: tuple[str, ...], used: set[str]) -> None:
    """Logs how many files under the splits are not read, and why: only <split>/<label>/<file>
    with a .jpg/.jpeg/.png name is."""
    reasons: dict[str, list[str]] = {}
    for split in splits:
        top = os.path.join(root, split)
        for directory, _, names in os.walk(top):
            depth = len(os.path.relpath(directory, top).split(os.sep))
            for name in names:
                path = os.path.join(directory, name)
                if path in used:
                    continue
                if directory == top:
                    why = f'directly in {split}/, outside any <label>/ folder'
                elif depth > 1:
                    why = 'in a folder below <split>/<label>/ (not read)'
                else:
                    why = 'not named .jpg/.jpeg/.png'
                reasons.setdefault(why, []).append(path)
    if reasons:
        logging.warning(
            'image folder %s: %d file(s) skipped: %s',
            root,
            sum(len(p) for p in reasons.values()),
            '; '.join(f'{len(p)} {why} (e.g. {p[0]})' for why, p in reasons.items()),
        )


# ---------------------------------------------------------------- decoding


def read_image(path: str) -> np.ndarray:
    """The image at `path` as (height, width, 3) uint8 RGB; ValueError naming the file if PIL
    cannot decode it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # verify() would skip the pixel data; load() decodes it.
            return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))
    except Exception as e:  # PIL raises many types for broken files.  # noqa: BLE001
        message = f'{type(e).__name__}: {str(e).strip()}'.splitlines()[0]
        raise ValueError(f'image file {path} cannot be read: {message}') from None


def check_size(path: str, size: tuple[int, int], first: str, first_size: tuple[int, int]) -> None:
    """ValueError naming `path` if its (height, width) `size` differs from the first file's:
    only the 'imagenet' augmentation resizes."""
    if size != first_size:
        raise ValueError(
            f'image file {path} is {size[0]}x{size[1]}, not {first_size[0]}x{first_size[1]} '
            f'like {first}: resize the folder or use --config.dataset.augment=imagenet'
        )


def stored_size(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001
        read_image(path)  # Raises the one-line error naming the file.
        raise


def decode_images(files: tuple[str, ...], first: str, first_size: tuple[int, int]) -> np.ndarray:
    """Every file decoded into one (n, height, width, 3) uint8 array; every image must be
    `first_size` like the file `first`. Logs progress every 10 s."""
    out = np.empty((len(files), *first_size, 3), np.uint8)
    start, last_log = time.perf_counter(), time.perf_counter()
    for i, path in enumerate(files):
        image = read_image(path)
        check_size(path, image.shape[:2], first, first_size)
        out[i] = image
        if time.perf_counter() - last_log > 10:
            last_log = time.perf_counter()
            rate = (i + 1) / (last_log - start)
            logging.info(
                'decoded %d of %d images, ETA %.0f s', i + 1, len(files), (len(files) - i) / rate
            )
    return out


def cache_key(files: tuple[str, ...]) -> str:
    """Hex digest of the files' absolute paths, sizes and modification times, in order."""
    digest = hashlib.sha256(f'resjax image cache {CACHE_VERSION}\n'.encode())
    for path in files:
        info = os.stat(path)
        digest.update(f'{os.path.abspath(path)}\t{info.st_size}\t{info.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def cached_decode(
    files: tuple[str, ...],
    first: str,
    first_size: tuple[int, int],
    cache_dir: str,
    name: str,
) -> np.ndarray:
    """`decode_images(files, ...)`, read from `cache_dir/<name>-<key>.npy` if a previous run
    wrote it (then no image is opened), else decoded and written there. An unwritable
    `cache_dir` only costs the next run a decode (warning)."""
    path = os.path.join(cache_dir, f'{name}-{len(files)}-{cache_key(files)[:20]}.npy')
    expected = (len(files), *first_size, 3)
    if os.path.exists(path):
        try:
            images = np.load(path)
            if images.shape == expected and images.dtype == np.uint8:
                logging.info('image folder: %d decoded images read from %s', len(files), path)
                return images
        except (OSError, ValueError) as e:  # A truncated or foreign file: decode again.
            logging.warning('image cache %s unreadable (%s); decoding again', path, e)
    start = time.perf_counter()
    logging.info('image folder: decoding %d images (once; cached in %s)', len(files), cache_dir)
    images = decode_images(files, first, first_size)
    seconds = time.perf_counter() - start
    logging.info('image folder: decoded %d images in %.1f s', len(files), seconds)
    partial = f'{path}.{os.getpid()}.partial'
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with open(partial, 'wb') as f:
            np.save(f, images)
        os.replace(partial, path)  # Atomic: concurrent runs and processes never read half a file.
    except OSError as e:
        logging.warning('image cache not written to %s (%s): the next run decodes again', path, e)
        with contextlib.suppress(OSError):
            os.remove(partial)
    return images


# ---------------------------------------------------------------- in-memory dataset


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w, 3) pixels -> float32, per channel (x / 255 - mean) / std."""
    mean, inv_std = _image_constants(images.shape[1:])
    out = images.astype(np.float32)
    out -= mean
    out *= inv_std
    return out


@functools.cache
def _image_constants(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 1/std as contiguous arrays of one image's shape: numpy is much slower
    broadcasting a 3-vector (and allocates a temporary per operation; hence in place)."""
    mean = np.broadcast_to(np.float32(MEAN) * 255, shape).copy()
    return mean, np.broadcast_to(1 / (np.float32(STD) * 255), shape).copy()


def cifar_draws(seed: int, step: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The 'cifar' augmentation of step `step`'s global batch: (global_batch, 2) crop offsets
    (top, left) into the padded image, in [0, 2 * CIFAR_PAD], and (global_batch,) flips; a pure
    function of (seed, step)."""
    # [seed, 1, step]: a stream apart from the epoch permutations' [seed, epoch].
    rng = np.random.default_rng([seed, 1, step])
    offsets = rng.integers(0, 2 * CIFAR_PAD + 1, (global_batch, 2))
    return offsets, rng.random(global_batch) < 0.5


def cifar_augment(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Normalised (n, h, w, c) images zero-padded by CIFAR_PAD (0 = the mean colour, as
    fb.resnet.torch), cropped back to (h, w) at `offsets` and flipped left-right where `flips`."""
    n, h, w, c = images.shape
    p = CIFAR_PAD
    padded = np.zeros((n, h + 2 * p, w + 2 * p, c), images.dtype)
    padded[:, p : p + h, p : p + w] = images
    out = np.empty_like(images)
    for i, ((y, x), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        crop = padded[i, y : y + h, x : x + w]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def in_memory_dataset(
    folder: Folder,
    config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
) -> Dataset:
    """The folder decoded into memory (cached), as an `array_dataset`; see the module docstring."""
    from resjax.data import array_dataset, data_seed  # resjax.data imports this module lazily.

    d = config.dataset
    train_files, train_labels = folder.train_files, folder.train_labels
    if d.num_train_examples:
        train_files = train_files[: d.num_train_examples]
        train_labels = train_labels[: d.num_train_examples]
    first, first_size = train_files[0], stored_size(train_files[0])
    cache_dir = os.path.expanduser(d.cache_dir or DEFAULT_CACHE_DIR)
    base = os.path.basename(os.path.normpath(folder.root)) or 'root'
    images = cached_decode(train_files, first, first_size, cache_dir, f'{base}-train')
    test_images = cached_decode(
        folder.eval_files, first, first_size, cache_dir, f'{base}-{folder.eval_split}'
    )
    global_batch = config.train.batch_size
    first_row = process_index * (global_batch // process_count)  # This process's global rows.

    def train_transform(batch: np.ndarray, step: int) -> np.ndarray:
        if d.augment == 'none':
            return normalize(batch)
        offsets, flips = cifar_draws(data_seed(config), step, global_batch)
        rows = slice(first_row, first_row + len(batch))
        return cifar_augment(normalize(batch), offsets[rows], flips[rows])

    return array_dataset(
        'image_folder',
        images,
        train_labels,
        test_images,
        folder.eval_labels,
        len(folder.label_names),
        config,
        process_index,
        process_count,
        train_transform=train_transform,
        eval_transform=normalize,
    )


def choose_loader(folder: Folder, d: ml_collections.ConfigDict) -> str:
    """'numpy' or 'tfds' for `dataset.loader` ('auto': numpy when the decoded folder fits in
    IN_MEMORY_MAX_BYTES and the augmentation is not 'imagenet')."""
    if d.loader not in LOADERS:
        raise ValueError(f'dataset.loader={d.loader!r}: use one of {LOADERS}')
    if d.augment not in ('cifar', 'imagenet', 'none'):
        raise ValueError(f"dataset.augment={d.augment!r}: use 'cifar', 'imagenet' or 'none'")
    if d.loader == 'numpy' and d.augment == 'imagenet':
        raise ValueError(
            "dataset.loader='numpy' does not do the 'imagenet' augmentation (random-resized "
            "crops): use --config.dataset.loader=tfds (needs TensorFlow) or augment 'cifar'/'none'"
        )
    if d.loader != 'auto':
        return d.loader
    if d.augment == 'imagenet':
        return 'tfds'
    num_train = len(folder.train_files)
    if d.num_train_examples:
        num_train = min(num_train, d.num_train_examples)
    height, width = stored_size(folder.train_files[0])
    num_bytes = (num_train + len(folder.eval_files)) * height * width * 3
    return 'numpy' if num_bytes <= IN_MEMORY_MAX_BYTES else 'tfds'


def create_dataset(
    config: ml_collections.ConfigDict, process_index: int, process_count: int
) -> Dataset:
    """The `image_folder` dataset through the loader `choose_loader` picks; ValueError (one line)
    for a bad folder or option, before any batch is read."""
    folder = list_folder(config.dataset.data_dir)
    loader = choose_loader(folder, config.dataset)
    if loader == 'numpy':
        return in_memory_dataset(folder, config, process_index, process_count)
    try:
        from resjax.data import tfds_pipeline  # Lazy: TensorFlow is heavy and optional.
    except ImportError as e:
        if config.dataset.loader == 'tfds':
            why = 'dataset.loader=tfds'
        elif config.dataset.augment == 'imagenet':
            why = "augment='imagenet'"
        else:
            why = f'decoded images over {IN_MEMORY_MAX_BYTES >> 30} GiB'
        raise ValueError(
            f'image folder {folder.root} needs the tf.data loader ({why}) and TensorFlow is not '
            f"installed ({e}): pip install -e '.[tfds]', or --config.dataset.loader=numpy"
        ) from None
    return tfds_pipeline.create_dataset(config, process_index, process_count, folder)
