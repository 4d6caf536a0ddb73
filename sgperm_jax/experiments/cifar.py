"""CIFAR-10 for the trainer: a safe loader of the python batches, augmentation.

:func:`load_cifar10` reads the standard *python version* of CIFAR-10 (the
directory ``cifar-10-batches-py`` of ``cifar-10-python.tar.gz``, from
https://www.cs.toronto.edu/~kriz/cifar.html) from a directory you give;
nothing is ever downloaded. The batches are pickles; they are read with an
unpickler that builds numpy arrays and plain Python values only, so a file
that would run other code is refused
(:class:`~sgperm_jax.experiments.data.DataError`) instead of executed.

:func:`augment` is the usual CIFAR augmentation, random crops of the
zero-padded image and random horizontal flips, as a pure JAX function of a
key and a batch, so it runs inside the jitted train step.
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pathlib
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgperm_jax.experiments.data import DataError, Dataset

SIDE = 32
CHANNELS = 3
NUM_CLASSES = 10
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
SUBDIRECTORY = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
DEFAULT_PADDING = 4


def _numpy_function(module: str, name: str) -> Any:
  """``module.name`` from numpy 2 (``numpy._core``) or numpy 1
  (``numpy.core``), without numpy 2's warning about ``numpy.core``."""
  for candidate in (module.replace("numpy.core.", "numpy._core."),
                    module.replace("numpy._core.", "numpy.core.")):
    try:
      return getattr(importlib.import_module(candidate), name)
    except (ImportError, AttributeError):
      continue
  raise AttributeError(f"numpy has no {module}.{name}")


# What a pickled numpy array (protocols 2 to 5) refers to, and nothing else
# (_codecs.encode: how Python 3 writes bytes in protocol 2).
_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles plain values and numpy arrays; refuses any other class."""

  def __init__(self, file: io.BufferedIOBase, path: pathlib.Path):
    super().__init__(file, encoding="bytes")
    self._path = path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED:
      raise DataError(f"{self._path}: refusing to unpickle {module}.{name}:"
                      " a CIFAR batch holds only numpy arrays and plain"
                      " values, and a pickle naming anything else could run"
                      " code")
    if module == "numpy":
      return getattr(np, name)
    if module == "_codecs":
      return codecs.encode
    return _numpy_function(module, name)


def unpickle(path: str | os.PathLike) -> Any:
  """Reads a pickle that may hold only plain values and numpy arrays.

  Args:
    path: the file.

  Returns:
    What the file holds (strings of a Python 2 pickle stay ``bytes``).

  Raises:
    DataError: if the file is missing, is not a pickle, or names a class or
      function other than what numpy arrays need.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  try:
    with open(path, "rb") as f:
      return _ArrayUnpickler(f, path).load()
  except DataError:
    raise
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror})") from e
  except Exception as e:  # what a corrupt pickle raises varies
    raise DataError(f"{path}: not a valid pickle ({type(e).__name__}:"
                    f" {e})") from e


def _batch_directory(directory: pathlib.Path) -> pathlib.Path:
  """``directory``, or its ``cifar-10-batches-py`` if it holds the batches.

  Raises:
    DataError: naming the directory and the missing files.
  """
  if not directory.exists():
    raise DataError(f"{directory}: no such directory")
  if not directory.is_dir():
    raise DataError(f"{directory}: not a directory; give the directory of"
                    f" the CIFAR-10 python batches ({SUBDIRECTORY})")
  names = (*TRAIN_FILES, TEST_FILE)
  for candidate in (directory, directory / SUBDIRECTORY):
    if all((candidate / n).is_file() for n in names):
      return candidate
  inner = directory / SUBDIRECTORY
  where = inner if inner.is_dir() else directory
  missing = [n for n in names if not (where / n).is_file()]
  hint = ""
  if (directory / ARCHIVE).is_file() and not inner.is_dir():
    hint = f"; extract {ARCHIVE} first (tar xzf {directory / ARCHIVE})"
  raise DataError(f"{where}: missing CIFAR-10 file(s) {', '.join(missing)}"
                  " (the python version of CIFAR-10, from"
                  " https://www.cs.toronto.edu/~kriz/cifar.html; nothing is"
                  f" downloaded){hint}")


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 python batch: images and labels.

  Args:
    path: a batch file (``data_batch_1``, ``test_batch``, ...), a pickled
      dict with ``b"data"``, uint8 ``(count, 3072)`` rows of a red, a green
      and a blue 32x32 plane, and ``b"labels"``, ``count`` integers
      in ``0..9``.

  Returns:
    ``(images, labels)``: float32 ``(count, 32, 32, 3)`` in ``[0, 1]``
    (height, width, then red, green, blue) and int32 ``(count,)``.

  Raises:
    DataError: if the file is missing, unsafe or not such a batch.
  """
  path = pathlib.Path(path)
  batch = unpickle(path)
  if not isinstance(batch, dict):
    raise DataError(f"{path}: expected a pickled dict, found"
                    f" {type(batch).__name__}")
  for key in (b"data", b"labels"):
    if key not in batch and key.decode() not in batch:
      found = ", ".join(repr(k) for k in batch) or "none"
      raise DataError(f"{path}: no {key!r} entry (found {found})")
  data = batch.get(b"data", batch.get("data"))
  labels = batch.get(b"labels", batch.get("labels"))
  size = SIDE * SIDE * CHANNELS
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
      or data.ndim != 2 or data.shape[1] != size):
    what = (f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray) else type(data).__name__)
    raise DataError(f"{path}: b'data' must be a uint8 array of shape"
                    f" (count, {size}), found a {what}")
  try:
    labels = np.asarray(labels)
  except (TypeError, ValueError) as e:
    raise DataError(f"{path}: b'labels' is not a list of integers") from e
  if labels.ndim != 1 or not (labels.size == 0
                              or np.issubdtype(labels.dtype, np.integer)):
    raise DataError(f"{path}: b'labels' must be a list of integers, found"
                    f" {labels.dtype} of shape {labels.shape}")
  if len(labels) != len(data):
    raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
  if len(data) == 0:
    raise DataError(f"{path}: holds no images")
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found"
                    f" {labels.min()}..{labels.max()}")
  images = data.reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
  images = images.astype(np.float32, order="C")
  images /= 255.0
  return images, labels.astype(np.int32)


def load_cifar10(directory: str | os.PathLike) -> Dataset:
  """CIFAR-10 from the python batches in ``directory``; never downloads.

  Args:
    directory: the directory holding ``data_batch_1`` .. ``data_batch_5`` and
      ``test_batch`` (``cifar-10-batches-py``), or the one containing
      ``cifar-10-batches-py``.

  Returns:
    A :class:`~sgperm_jax.experiments.data.Dataset` of float32 images
    ``(count, 32, 32, 3)`` in ``[0, 1]``: the five data batches, in order,
    for training and ``test_batch`` for testing.

  Raises:
    DataError: naming the directory and the missing files, or the file that
      is malformed or unsafe.
  """
  directory = pathlib.Path(directory)
  where = _batch_directory(directory)
  parts = [read_batch(where / name) for name in TRAIN_FILES]
  x_test, y_test = read_batch(where / TEST_FILE)
  return Dataset(f"cifar10:{directory}",
                 np.concatenate([x for x, _ in parts]),
                 np.concatenate([y for _, y in parts]), x_test, y_test)


def augment(key: jax.Array, images: jax.Array, *,
            padding: int = DEFAULT_PADDING, flip: bool = True) -> jax.Array:
  """Random crops of the zero-padded images and random horizontal flips.

  Each image of the batch is padded with ``padding`` zeros on every side,
  cropped back to its size at a uniformly random offset, and mirrored left
  to right with probability 1/2. Pure and jit-able: the same key gives the
  same batch.

  Args:
    key: a PRNG key (raw ``uint32[2]`` or typed).
    images: ``(batch, height, width, channels)``.
    padding: zeros added on each side before cropping (0: no crop).
    flip: whether to flip at random.

  Returns:
    The augmented images, of the shape and dtype of ``images``.

  Raises:
    ValueError: if ``images`` is not 4-D or ``padding`` is negative.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sgperm_jax.experiments import cifar
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> y = cifar.augment(jax.random.PRNGKey(0), x, padding=2)
    >>> y.shape, bool((y == 0).any() | (y == x).all())
    ((2, 8, 8, 3), True)
  """
  if jnp.ndim(images) != 4:
    raise ValueError("augment: images must be (batch, height, width,"
                     f" channels), got shape {jnp.shape(images)}")
  if isinstance(padding, bool) or not isinstance(padding, int) or (
      padding < 0):
    raise ValueError(f"augment: padding must be an integer >= 0, got"
                     f" {padding!r}")
  count, height, width, depth = images.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                              (0, 0)))
    offsets = jax.random.randint(crop_key, (count, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
      return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                   (height, width, depth))

    images = jax.vmap(crop)(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (count, 1, 1, 1))
    images = jnp.where(mirror, images[:, :, ::-1], images)
  return images
