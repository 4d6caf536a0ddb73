"""Data loading: bundled digits, IDX files and CSV, and their error messages."""

import gzip
import pathlib

import numpy as np
import pytest

from sgperm_jax.experiments import data
from tests import helpers


def write_idx(path: pathlib.Path, array: np.ndarray, magic: int | None = None,
              truncate: int = 0) -> pathlib.Path:
  """Writes ``array`` as an IDX file of unsigned bytes (gzipped if .gz)."""
  magic = 0x0800 + array.ndim if magic is None else magic
  raw = magic.to_bytes(4, "big") + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  raw += array.astype(np.uint8).tobytes()
  raw = raw[:len(raw) - truncate]
  path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
  return path


def make_images(count: int, side: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, side, side), dtype=np.uint8)
  labels = (np.arange(count) % 10).astype(np.uint8)
  return images, labels


def write_csv(path: pathlib.Path, images: np.ndarray, labels: np.ndarray,
              header: bool = False) -> pathlib.Path:
  lines = ["," .join(map(str, list(img.ravel()) + [lab]))
           for img, lab in zip(images, labels)]
  if header:
    lines.insert(0, ",".join([f"p{i}" for i in range(images[0].size)]
                             + ["label"]))
  text = "\n".join(lines) + "\n"
  raw = text.encode()
  path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
  return path


def _all_images(d: data.Dataset) -> np.ndarray:
  return np.concatenate([d.x_train, d.x_test])


def _all_labels(d: data.Dataset) -> np.ndarray:
  return np.concatenate([d.y_train, d.y_test])


def _same_examples(d: data.Dataset, images: np.ndarray, labels: np.ndarray):
  """The data set holds exactly ``images`` with ``labels``, in some order."""
  pixels = np.rint(_all_images(d) * 255).astype(int)
  got = sorted(zip(_all_labels(d).tolist(),
                   pixels.reshape(len(labels), -1).tolist()))
  expected = sorted(zip(labels.tolist(),
                        images.reshape(len(labels), -1).tolist()))
  assert got == expected


def test_digits_split_is_fixed_and_disjoint():
  a, b = data.load_digits(), data.load_digits()
  np.testing.assert_array_equal(a.y_test, b.y_test)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert a.x_train.shape == (1438, 8, 8, 1)
  assert a.x_test.shape == (359, 8, 8, 1)
  assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
  assert 0.0 <= a.x_train.min() and a.x_train.max() == 1.0
  assert a.num_classes == 10 and a.image_shape == (8, 8, 1)
  # no test image is also a training image
  train = {x.tobytes() for x in a.x_train}
  assert sum(x.tobytes() in train for x in a.x_test) < 5  # digits has dupes


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_file_with_labels_beside_it(tmp_path, suffix):
  images, labels = make_images(20)
  write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
  write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
  d = data.load_dataset(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
  assert d.x_train.shape == (16, 4, 4, 1) and d.x_test.shape == (4, 4, 4, 1)
  _same_examples(d, images, labels)


def test_idx_directory_uses_t10k_as_test_set(tmp_path):
  images, labels = make_images(12)
  test_images, test_labels = make_images(5, seed=1)
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
  write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
  write_idx(tmp_path / "t10k-images.idx3-ubyte", test_images)
  write_idx(tmp_path / "t10k-labels.idx1-ubyte", test_labels)
  d = data.load_dataset(str(tmp_path))
  np.testing.assert_array_equal(d.y_train, labels)
  np.testing.assert_array_equal(d.y_test, test_labels)
  np.testing.assert_allclose(d.x_test[..., 0], test_images / 255.0)


def test_idx_directory_without_t10k_is_split(tmp_path):
  images, labels = make_images(10)
  write_idx(tmp_path / "train-images-idx3-ubyte", images)
  write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  d = data.load_dataset(str(tmp_path))
  assert len(d.y_train) == 8 and len(d.y_test) == 2
  _same_examples(d, images, labels)


def test_csv_round_trip_with_header_and_gzip(tmp_path):
  images, labels = make_images(15, side=3)
  d = data.load_dataset(str(write_csv(tmp_path / "x.csv.gz", images, labels,
                                      header=True)))
  assert d.image_shape == (3, 3, 1) and len(d.y_test) == 3
  _same_examples(d, images, labels)


def test_missing_file(tmp_path):
  message = helpers.data_error(tmp_path / "nope-images-idx3-ubyte")
  assert str(tmp_path / "nope-images-idx3-ubyte") in message
  assert "no such file" in message


def test_bad_idx_magic_names_the_file(tmp_path):
  images, labels = make_images(4)
  path = write_idx(tmp_path / "train-images-idx3-ubyte", images,
                   magic=0x0801)
  write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  message = helpers.data_error(path)
  assert str(path) in message and "magic" in message


def test_truncated_idx_data(tmp_path):
  images, labels = make_images(4)
  path = write_idx(tmp_path / "train-images-idx3-ubyte", images, truncate=3)
  write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  message = helpers.data_error(path)
  assert str(path) in message and "64 bytes of data" in message
  assert "holds 61" in message


def test_short_idx_header(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
  write_idx(tmp_path / "train-labels-idx1-ubyte", make_images(4)[1])
  assert "truncated IDX header" in helpers.data_error(path)


def test_missing_labels_file_is_named(tmp_path):
  path = write_idx(tmp_path / "train-images-idx3-ubyte", make_images(4)[0])
  message = helpers.data_error(path)
  assert str(tmp_path / "train-labels-idx1-ubyte") in message


def test_label_count_mismatch(tmp_path):
  images, labels = make_images(4)
  path = write_idx(tmp_path / "train-images-idx3-ubyte", images)
  write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:3])
  assert "3 labels for 4 images" in helpers.data_error(path)


def test_images_file_named_otherwise(tmp_path):
  path = write_idx(tmp_path / "pictures.bin", make_images(4)[0])
  assert "cannot tell where its labels are" in helpers.data_error(path)


def test_corrupt_gzip(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(b"\x1f\x8b this is not gzip")
  assert "not a valid gzip file" in helpers.data_error(path)


def test_directory_without_idx_files(tmp_path):
  assert "no train-images-idx3-ubyte" in helpers.data_error(tmp_path)


def test_csv_wrong_column_count_names_file_and_line(tmp_path):
  images, labels = make_images(6, side=3)
  path = write_csv(tmp_path / "d.csv", images, labels)
  lines = path.read_text().splitlines()
  lines[3] += ",7"
  path.write_text("\n".join(lines))
  message = helpers.data_error(path)
  assert str(path) in message
  assert "line 4 has 11 columns, expected 10" in message


def test_csv_not_a_square_image(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text("1,2,3,4,5,0\n1,2,3,4,5,1\n")
  assert "6 columns per line" in helpers.data_error(path)


@pytest.mark.parametrize("line, expected", [
    ("1,2,3,256,0", "pixel values must lie in 0..255"),
    ("1,2,3,-1,0", "pixel values must lie in 0..255"),
    ("1,2,3,4,1.5", "must be a non-negative integer"),
    ("1,2,x,4,1", "'x' is not a number"),
])
def test_csv_bad_values(tmp_path, line, expected):
  path = tmp_path / "d.csv"
  path.write_text(f"0,0,0,0,1\n{line}\n")
  message = helpers.data_error(path)
  assert expected in message and str(path) in message


def test_csv_empty(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text("\n")
  assert "no data lines" in helpers.data_error(path)


def test_one_image_cannot_be_split(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text("0,0,0,0,1\n")
  assert "at least 2" in helpers.data_error(path)
