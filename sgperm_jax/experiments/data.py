"""Data sets for the trainer: 8x8 digits, MNIST-style IDX, CSV, CIFAR-10.

Every loader returns a :class:`Dataset` of images ``(count, height, width,
channels)`` (one channel, or three for CIFAR-10) as float32 in ``[0, 1]`` and
integer labels. A missing or malformed file raises :class:`DataError`, whose
message names the file and what is wrong with it, so the command line can
print it as one line.

* ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, no download),
  with a fixed train/test split.
* a directory holding the standard MNIST file names
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-...``,
  each optionally ``.gz``); without the ``t10k`` files the training files are
  split.
* an IDX images file (``...-images-idx3-ubyte[.gz]``); its labels file is the
  one named alike (``...-labels-idx1-ubyte[.gz]``) beside it. It is split.
* a CSV file (optionally ``.gz``): one image per line, ``side * side`` pixel
  values in ``0..255`` followed by the label. It is split.
* ``"cifar10:PATH"``: the python batches of CIFAR-10 in the directory
  ``PATH`` (:func:`sgperm_jax.experiments.cifar.load_cifar10`; never
  downloaded), with its own test batch.

Splits are fixed (they do not depend on the training seed), so every run
is evaluated on the same test images.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pathlib
import zlib

import numpy as np

TEST_FRACTION = 0.2
SPLIT_SEED = 0
_IDX_IMAGES = 0x0803  # unsigned bytes, 3 dimensions
_IDX_LABELS = 0x0801  # unsigned bytes, 1 dimension


class DataError(ValueError):
  """A data file is missing or malformed; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images in ``[0, 1]`` with integer labels, split into train and test."""
  name: str
  x_train: np.ndarray  # float32 (count, height, width, channels)
  y_train: np.ndarray  # int32 (count,)
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    """One more than the largest label."""
    return int(max(self.y_train.max(), self.y_test.max())) + 1

  @property
  def image_shape(self) -> tuple[int, ...]:
    """``(height, width, channels)``."""
    return tuple(self.x_train.shape[1:])


def split(name: str, images: np.ndarray, labels: np.ndarray,
          test_fraction: float = TEST_FRACTION) -> Dataset:
  """Splits images and labels into a fixed training and test set.

  Args:
    name: the data set's name.
    images: ``(count, height, width, 1)`` float32 images.
    labels: ``(count,)`` integer labels.
    test_fraction: the share of the images held out for testing.

  Returns:
    A :class:`Dataset`; the split depends only on ``count``.

  Raises:
    DataError: if there are fewer than two images.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax.experiments import data
    >>> d = data.split("toy", np.zeros((10, 2, 2, 1), np.float32),
    ...                np.arange(10))
    >>> d.x_train.shape, d.x_test.shape, d.num_classes
    ((8, 2, 2, 1), (2, 2, 2, 1), 10)
  """
  count = len(labels)
  if count < 2:
    raise DataError(f"{name}: {count} image(s), at least 2 are needed to hold"
                    " some out for testing")
  order = np.random.default_rng(SPLIT_SEED).permutation(count)
  n_test = min(count - 1, max(1, round(test_fraction * count)))
  test, train = order[:n_test], order[n_test:]
  return Dataset(name, images[train], labels[train].astype(np.int32),
                 images[test], labels[test].astype(np.int32))


def load_digits() -> Dataset:
  """scikit-learn's bundled 8x8 digits: 1438 training and 359 test images.

  Example:
    >>> from sgperm_jax.experiments import data
    >>> d = data.load_digits()
    >>> d.x_train.shape, d.x_test.shape, d.num_classes
    ((1438, 8, 8, 1), (359, 8, 8, 1), 10)
  """
  from sklearn import datasets  # noqa: PLC0415 (lazy import)
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return split("digits", images, digits.target)


def _read_bytes(path: pathlib.Path) -> bytes:
  """The file's contents, gunzipped when the name ends in ``.gz``."""
  if not path.exists():
    raise DataError(f"{path}: no such file")
  if path.is_dir():
    raise DataError(f"{path}: is a directory, expected a file")
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror})") from e
  if path.name.endswith(".gz"):
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{path}: not a valid gzip file ({e})") from e
  return raw


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (the MNIST format).

  Args:
    path: the file, gzipped if its name ends in ``.gz``.
    magic: the expected magic number: ``0x0803`` for images, ``0x0801`` for
      labels.

  Returns:
    A uint8 array of the shape the header declares.

  Raises:
    DataError: if the file is missing, truncated or has another header.
  """
  path = pathlib.Path(path)
  raw = _read_bytes(path)
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < 4:
    raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
  found = int.from_bytes(raw[:4], "big")
  if found != magic:
    kind = "images" if magic == _IDX_IMAGES else "labels"
    raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected"
                    f" 0x{magic:08x} ({kind}, unsigned bytes, {ndim}-D)")
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected"
                    f" {header})")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  expected = math.prod(shape)
  if len(raw) - header != expected:
    raise DataError(f"{path}: header declares shape {shape} ({expected}"
                    f" bytes of data), the file holds {len(raw) - header}")
  if expected == 0:
    raise DataError(f"{path}: holds no data (shape {shape})")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _labels_path(images: pathlib.Path) -> pathlib.Path:
  """The labels file beside ``images``: ``images-idx3`` -> ``labels-idx1``."""
  name = images.name
  for old, new in (("images-idx3", "labels-idx1"),
                   ("images.idx3", "labels.idx1")):
    if old in name:
      base = name.replace(old, new)
      candidates = [base, base[:-3] if base.endswith(".gz") else base + ".gz"]
      for candidate in candidates:
        if (images.parent / candidate).exists():
          return images.parent / candidate
      return images.parent / base
  raise DataError(f"{images}: cannot tell where its labels are: name the"
                  " images file like 'train-images-idx3-ubyte' and its labels"
                  " 'train-labels-idx1-ubyte'")


def _read_idx_pair(images_path: pathlib.Path
                   ) -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(images_path, _IDX_IMAGES)
  labels_path = _labels_path(images_path)
  labels = read_idx(labels_path, _IDX_LABELS)
  if len(labels) != len(images):
    raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)}"
                    f" images in {images_path}")
  return (images.astype(np.float32)[..., None] / 255.0,
          labels.astype(np.int32))


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
               stem.replace("-idx", ".idx") + ".gz"):
    if (directory / name).exists():
      return directory / name
  return None


def load_idx(path: str | os.PathLike) -> Dataset:
  """MNIST-style IDX data: an images file, or a directory of the four files.

  Args:
    path: an images file (``*-images-idx3-ubyte[.gz]``, labels beside it,
      split into train and test), or a directory with
      ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` and, for the
      test set, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
      (each optionally ``.gz``; without ``t10k`` the training set is split).

  Returns:
    A :class:`Dataset` with pixels scaled to ``[0, 1]``.

  Raises:
    DataError: if a file is missing or malformed.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    return split(str(path), *_read_idx_pair(path))
  train = _find(path, "train-images-idx3-ubyte")
  if train is None:
    raise DataError(f"{path}: no train-images-idx3-ubyte[.gz] in this"
                    " directory")
  x_train, y_train = _read_idx_pair(train)
  test = _find(path, "t10k-images-idx3-ubyte")
  if test is None:
    return split(str(path), x_train, y_train)
  x_test, y_test = _read_idx_pair(test)
  if x_test.shape[1:] != x_train.shape[1:]:
    raise DataError(f"{test}: images of shape {x_test.shape[1:3]}, the"
                    f" training images are {x_train.shape[1:3]}")
  return Dataset(str(path), x_train, y_train, x_test, y_test)


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _csv_table(path: pathlib.Path, text: str) -> np.ndarray:
  """Parses the lines of a CSV into a float64 table, checking column counts."""
  lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
  lines = [(i, line) for i, line in lines if line]
  if lines and not _is_number(lines[0][1].split(",")[0]):
    lines = lines[1:]  # a header
  if not lines:
    raise DataError(f"{path}: no data lines")
  first, columns = lines[0][0], lines[0][1].count(",") + 1
  for number, line in lines:
    if line.count(",") + 1 != columns:
      raise DataError(f"{path}: line {number} has {line.count(',') + 1}"
                      f" columns, expected {columns} like line {first}")
  try:
    values = np.asarray(",".join(line for _, line in lines).split(","),
                        np.float64)
  except ValueError:
    for number, line in lines:
      for field in line.split(","):
        if not _is_number(field):
          raise DataError(f"{path}: line {number}: {field.strip()!r} is not a"
                          " number") from None
    raise
  if not np.all(np.isfinite(values)):
    raise DataError(f"{path}: holds a value that is not finite")
  return values.reshape(len(lines), columns)


def load_csv(path: str | os.PathLike) -> Dataset:
  """A CSV of images, one per line: ``side * side`` pixels, then the label.

  Pixels are values in ``0..255``; the label is a non-negative integer. The
  file may be gzipped (``.gz``); a first line that is not numeric is taken as
  a header and skipped. The images are split into train and test.

  Args:
    path: the CSV file.

  Returns:
    A :class:`Dataset` with pixels scaled to ``[0, 1]``.

  Raises:
    DataError: if the file is missing, the column count is not the same on
      every line or not ``side * side + 1``, or a value is out of range.
  """
  path = pathlib.Path(path)
  try:
    text = _read_bytes(path).decode("ascii")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not a text CSV file ({e.reason} at byte"
                    f" {e.start})") from e
  table = _csv_table(path, text)
  columns = table.shape[1]
  side = math.isqrt(columns - 1)
  if columns < 2 or side * side != columns - 1:
    raise DataError(f"{path}: {columns} columns per line, expected a square"
                    " image's pixels plus a label (e.g. 785 = 28 * 28 + 1)")
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min() < 0 or pixels.max() > 255:
    raise DataError(f"{path}: pixel values must lie in 0..255, found"
                    f" {pixels.min():g}..{pixels.max():g}")
  bad = (labels < 0) | (labels != np.round(labels))
  if np.any(bad):
    row = int(np.argmax(bad))
    raise DataError(f"{path}: the label (last column) must be a non-negative"
                    f" integer, found {labels[row]:g} on data row {row + 1}")
  images = (pixels / 255.0).astype(np.float32).reshape(-1, side, side, 1)
  return split(str(path), images, labels.astype(np.int32))


CIFAR10_PREFIX = "cifar10:"


def load_dataset(spec: str) -> Dataset:
  """Loads ``"digits"``, CIFAR-10, a CSV file or IDX files.

  ``"cifar10:PATH"`` reads the CIFAR-10 python batches in the directory
  ``PATH``. Files whose name ends in ``.csv`` or ``.csv.gz`` are read as CSV,
  anything else as IDX.

  Args:
    spec: ``"digits"``, ``"cifar10:PATH"`` or a path.

  Returns:
    A :class:`Dataset`.

  Raises:
    DataError: if the file is missing or malformed.
  """
  if spec == "digits":
    return load_digits()
  if spec.startswith(CIFAR10_PREFIX) or spec == "cifar10":
    directory = spec[len(CIFAR10_PREFIX):]
    if not directory:
      raise DataError(f"{spec}: name the directory of the CIFAR-10 python"
                      " batches, as cifar10:PATH (nothing is downloaded)")
    from sgperm_jax.experiments import cifar  # noqa: PLC0415 (lazy import)
    return cifar.load_cifar10(directory)
  path = pathlib.Path(spec)
  if not path.exists():
    raise DataError(f"{path}: no such file or directory")
  if path.name.lower().endswith((".csv", ".csv.gz")):
    return load_csv(path)
  return load_idx(path)
