"""Compact export of a permuted network: initial values, and an order per row.

Every row of a network trained by :func:`sgperm_jax.sgperm` or
:func:`sgperm_jax.laperm` is a bit-exact permutation of its initial values
(docs/algorithm.md §2). :func:`save_permutation` therefore writes each row as
its values sorted (the *bank*) plus, per slot, the index of its value in the
bank, in the smallest unsigned integer type that holds the row's positions
(``uint8`` for rows of up to 256 values, ``uint16`` up to 65536, ``uint32``
beyond). Given the function that made the initial weights and its seed, the
banks are not stored at all: only the seed and a SHA-256 checksum of each
leaf's bank, and :func:`load_permutation` regenerates the initial weights,
sorts their rows and checks the checksums. A float32 network with rows of at
most 256 values then takes about a quarter of its float32 size. (The
checksums also catch an ``init_fn`` that no longer draws the same values, as
``jax.random`` may after an upgrade.) Without ``init_fn`` the file holds the
banks too, about 1.25 times the float32 size with ``uint8`` indices: a
self-contained file whose every row is, by construction, a permutation of
its bank.

The bank of a row is its values sorted by exact value (the order of
LaPerm's ranks: ``-0.0`` as ``+0.0``, NaNs last, subnormals by value), ties
broken by bit pattern, so that two rows holding the same bit patterns have
the same bank whatever their order. Leaves that are not rows of permuted
values are stored as they are (*raw*): leaves with the layout ``None``,
scalars, rows of one value, leaves that are not 16, 32 or 64-bit floats
(float8 too: no exact order key is defined for it here), and, when the banks
come from ``init_fn``, leaves that are not a permutation of their initial
values (say biases trained by Adam beside SGPerm). Loading gives back
every leaf bit for bit (``-0.0``, NaN payloads and subnormals included).

The file is one ``.npz`` archive read without pickle: a JSON metadata entry
(format, version, seed, the tree's structure, and per leaf its key path,
shape, dtype, layout, how it is stored and where) and a few flat arrays
(the banks' bit patterns, the indices per integer type, the raw leaves'
bytes). bfloat16 and the other dtypes NumPy cannot save natively are stored
as their bits. Without a template, nested mappings come back as plain
dicts (a Flax NNX state too), and lists and tuples as lists and tuples; any
other tree, or the exact container types, needs a template (``like``).

Example:
  >>> import os, tempfile
  >>> import jax, jax.numpy as jnp, numpy as np, optax, sgperm_jax
  >>> from sgperm_jax import export
  >>> def init_fn(seed):
  ...   return {"w": jax.random.normal(jax.random.key(seed), (16, 4))}
  >>> params = init_fn(0)
  >>> tx = sgperm_jax.sgperm(lamda0=0.5, partition_size_min=2)
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.cos(params["w"])}, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
  >>> info = export.save_permutation(path, params, state, init_fn=init_fn,
  ...                                seed=0)
  >>> info["leaves"], info["raw_float32_bytes"]
  ({"['w']": 'permutation'}, 256)
  >>> loaded = export.load_permutation(path, init_fn=init_fn)
  >>> exact = sgperm_jax.exact_params(params, state)
  >>> bool(np.array_equal(loaded["w"], exact["w"]))
  True
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import jax
import jax.numpy as jnp
import numpy as np

from sgperm_jax import _layout
from sgperm_jax._exact import _pure, exact_params
from sgperm_jax._laperm_sync import rank_key
from sgperm_jax._sorting import wide_ints

FORMAT: Final = "sgperm_jax.export"
VERSION: Final = 1
_METADATA: Final = "sgperm_jax_export"
PERMUTATION: Final = "permutation"
RAW: Final = "raw"

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------ the rows


def index_dtype(row_length: int) -> np.dtype:
  """The smallest unsigned integer type that holds ``0 .. row_length - 1``.

  Example:
    >>> from sgperm_jax.export import index_dtype
    >>> [index_dtype(n).name for n in (256, 257, 65536, 65537)]
    ['uint8', 'uint16', 'uint16', 'uint32']
  """
  for dtype in (np.uint8, np.uint16, np.uint32):
    if row_length - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  return np.dtype(np.uint64)


def _bits(x: np.ndarray) -> np.ndarray:
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _is_float(dtype: np.dtype) -> bool:
  """Whether leaves of ``dtype`` can be stored as permutations: floats of
  2, 4 or 8 bytes (the sizes the exact order key knows; float8 is raw)."""
  return bool(jnp.issubdtype(dtype, jnp.floating)) and (
      dtype.itemsize in (2, 4, 8))


_rank_key = jax.jit(rank_key)  # one program per shape, not one per op


def _bank_and_index(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each row sorted (exact value order, ties by bits) and the index of each
  slot's value in it: ``rows[j, i] == bank[j, index[j, i]]``."""
  with wide_ints():  # 64-bit keys of float64 rows, x64 mode or not
    key = np.asarray(_rank_key(jnp.asarray(rows)))
  order = np.lexsort((_bits(rows), key), axis=-1)
  bank = np.take_along_axis(rows, order, axis=-1)
  index = np.empty_like(order)
  np.put_along_axis(index, order,
                    np.broadcast_to(np.arange(rows.shape[-1]), rows.shape),
                    axis=-1)
  return bank, index


def _checksum(bank: np.ndarray) -> str:
  digest = hashlib.sha256(f"{bank.dtype.name}{bank.shape}".encode())
  digest.update(np.ascontiguousarray(_bits(bank)).astype(
      _bits(bank).dtype.newbyteorder("<")).tobytes())
  return digest.hexdigest()


def _rows(x: np.ndarray, spec: _layout.RowLayout) -> np.ndarray:
  """``x`` as ``(rows, n)`` (docs/algorithm.md §2), in NumPy."""
  return np.ascontiguousarray(_layout.to_rows(cast(Any, x), spec))


# ------------------------------------------------------------ the structure


class _Unsupported(Exception):
  pass


def _is_leaf(node: Any) -> bool:
  treedef = jax.tree.structure(node)
  return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _encode(node: Any, path: tuple[Any, ...]) -> Any:
  """The structure of ``node`` as JSON; leaves as their key paths."""
  if node is None:
    return None
  if isinstance(node, Mapping):
    items = []
    for k, v in node.items():
      if isinstance(k, bool) or not isinstance(k, (str, int)):
        raise _Unsupported(f"a dict key {k!r}")
      items.append([k, _encode(v, (*path, jax.tree_util.DictKey(k)))])
    return {"dict": items}
  if type(node) in (list, tuple):
    return {type(node).__name__: [
        _encode(v, (*path, jax.tree_util.SequenceKey(i)))
        for i, v in enumerate(node)]}
  if _is_leaf(node):
    return {"leaf": jax.tree_util.keystr(path)}
  raise _Unsupported(f"a node of type {type(node).__name__}")


# The structure saved for a tree of other nodes (``None`` is a tree of its
# own: an empty one).
_UNSUPPORTED = {"unsupported": True}


def _structure(tree: Any, paths: list[str]) -> Any:
  """JSON of ``tree``'s dicts, lists and tuples, or :data:`_UNSUPPORTED`."""
  try:
    encoded = _encode(tree, ())
  except _Unsupported:
    return _UNSUPPORTED
  found: list[str] = []

  def collect(node: Any) -> None:
    if isinstance(node, dict):
      for key, value in node.items():
        if key == "leaf":
          found.append(value)
        else:
          for child in value:
            collect(child[1] if key == "dict" else child)

  collect(encoded)
  return encoded if sorted(found) == sorted(paths) else _UNSUPPORTED


def _decode(node: Any, leaves: dict[str, Any]) -> Any:
  if node is None:
    return None
  (kind, value), = node.items()
  if kind == "leaf":
    return leaves[value]
  if kind == "dict":
    return {k: _decode(v, leaves) for k, v in value}
  children = [_decode(v, leaves) for v in value]
  return tuple(children) if kind == "tuple" else children


def _shown(path: str) -> str:
  return path or "<root>"


# ------------------------------------------------------------- the sections


class _Sections:
  """Flat arrays, one per kind and dtype, that the leaves are appended to."""

  def __init__(self) -> None:
    self.parts: dict[str, list[np.ndarray]] = {}
    self.sizes: dict[str, int] = {}

  def add(self, name: str, array: np.ndarray) -> int:
    """Appends ``array`` (flattened) to section ``name``; its offset."""
    offset = self.sizes.get(name, 0)
    self.parts.setdefault(name, []).append(np.ravel(array))
    self.sizes[name] = offset + array.size
    return offset

  def arrays(self) -> dict[str, np.ndarray]:
    return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def _raw_bytes(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


# ------------------------------------------------------------------ saving


def _check_path(path: Any, where: str) -> str:
  if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"sgperm_jax: {where}: path must be a file path, got"
                    f" {path!r}")
  return os.fspath(path)


def _flat(tree: Any) -> tuple[list[str], list[Any]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def _array(x: Any, path: str) -> np.ndarray:
  x = np.asarray(x)
  try:
    known = x.dtype.kind in "biufcV" and np.dtype(x.dtype.name) == x.dtype
  except TypeError:
    known = False
  if not known:
    raise TypeError(f"sgperm_jax: leaf {_shown(path)} has dtype {x.dtype},"
                    " which cannot be exported")
  return x


def _initial_leaves(init_fn: Callable[[Any], Any], seed: Any
                    ) -> dict[str, np.ndarray]:
  paths, leaves = _flat(_pure(init_fn(seed)))
  return {p: np.asarray(x) for p, x in zip(paths, leaves)}


def _initial_bank(initial: dict[str, np.ndarray], path: str, shape: Any,
                  dtype: np.dtype, spec: _layout.RowLayout, seed: Any,
                  where: str) -> np.ndarray:
  """The bank of leaf ``path`` made from ``init_fn(seed)``'s values."""
  x = initial.get(path)
  if x is None:
    raise ValueError(f"sgperm_jax: {where}: init_fn({seed!r}) has no leaf"
                     f" {_shown(path)}")
  if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
    raise ValueError(
        f"sgperm_jax: {where}: leaf {_shown(path)} of init_fn({seed!r}) is"
        f" {x.dtype}{list(x.shape)}, expected {dtype}{list(shape)} (wrong"
        " init_fn?)")
  return _bank_and_index(_rows(x, spec))[0]


def save_permutation(path: PathLike, params: Any, opt_state: Any = None, *,
                     layout: _layout.LayoutSpec = "neurons",
                     init_fn: Callable[[Any], Any] | None = None,
                     seed: int | None = None, compress: bool = False
                     ) -> dict[str, Any]:
  """Writes the weights as sorted initial values plus a permutation per row.

  Args:
    path: the file to write (an ``.npz`` archive; the name is used as
      given, no suffix is added). An existing file is replaced.
    params: the parameters, a tree of arrays (Flax NNX states too).
    opt_state: the optimizer state; if given, the exact weights
      :func:`sgperm_jax.exact_params` ``(params, opt_state)`` are saved,
      else ``params`` as they are.
    layout: the rows, as for :func:`sgperm_jax.sgperm`: ``"neurons"``,
      ``"whole"`` or ``None`` for every leaf, a tree of those, or a callable
      on the params (docs/algorithm.md §2). Leaves with the layout ``None``
      are stored raw.
    init_fn: with ``seed``, a function such that ``init_fn(seed)`` returns
      the initial params (a tree with the same key paths, shapes and
      dtypes); the banks are then not stored, only ``seed`` and their
      checksums, and leaves that are not a row-by-row permutation of their
      initial values are stored raw. :func:`load_permutation` needs the
      same ``init_fn``.
    seed: the integer passed to ``init_fn``; stored in the file.
    compress: whether to deflate the archive (``np.savez_compressed``).

  Returns:
    A dict: ``"path"``; ``"mode"`` (``"init_fn"`` or ``"bank"``);
    ``"leaves"``, for each leaf's key path (as ``jax.tree_util.keystr``
    writes it) ``"permutation"`` or ``"raw"``; ``"file_bytes"``, the size
    of the file; ``"raw_float32_bytes"``, 4 bytes per parameter; and
    ``"ratio"``, their quotient.

  Raises:
    TypeError: for a bad ``path``, ``init_fn`` or ``seed``, or a leaf of a
      dtype that cannot be exported (object, string).
    ValueError: for a bad ``layout``; if only one of ``init_fn`` and
      ``seed`` is given, or ``init_fn(seed)`` lacks a leaf to permute or has
      it with another shape or dtype; if ``opt_state`` holds no sgperm_jax
      state.

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from sgperm_jax.export import save_permutation
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> info = save_permutation(path, {"w": jnp.ones((3, 2)), "s": 1.0})
    >>> info["mode"], info["leaves"]
    ('bank', {"['s']": 'raw', "['w']": 'permutation'})
  """
  where = "save_permutation"
  path = _check_path(path, where)
  if (init_fn is None) != (seed is None):
    raise ValueError(f"sgperm_jax: {where}: init_fn and seed go together;"
                     " give both or neither")
  if init_fn is not None and not callable(init_fn):
    raise TypeError(f"sgperm_jax: {where}: init_fn must be callable, got"
                    f" {init_fn!r}")
  if seed is not None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
      raise TypeError(f"sgperm_jax: {where}: seed must be an integer, got"
                      f" {seed!r}")
    seed = int(seed)
  tree = (_pure(params) if opt_state is None
          else exact_params(params, opt_state))
  specs = jax.tree.structure(tree).flatten_up_to(
      _layout.resolve_layout(layout, tree))
  paths, leaves = _flat(tree)
  initial = (None if init_fn is None
             else _initial_leaves(init_fn, seed))
  sections = _Sections()
  entries, stored = [], {}
  for leaf_path, leaf, spec in zip(paths, leaves, specs):
    x = _array(leaf, leaf_path)
    entry: dict[str, Any] = dict(path=leaf_path, shape=list(x.shape),
                                 dtype=x.dtype.name, layout=spec)
    size = (_layout.row_shape(x.shape, spec) if _is_float(x.dtype)
            else None)
    if size is not None:
      bank, index = _bank_and_index(_rows(x, spec))
      if initial is not None:
        start = _initial_bank(initial, leaf_path, x.shape, x.dtype, spec,
                              seed, where)
        if not np.array_equal(_bits(start), _bits(bank)):
          size = None  # not a permutation of the initial values
      else:
        entry["bank_offset"] = sections.add(f"bank_{_bits(bank).dtype.name}",
                                            _bits(bank))
    if size is None:
      entry.update(storage=RAW, offset=sections.add("raw", _raw_bytes(x)))
    else:
      idx_dtype = index_dtype(index.shape[-1])
      entry.update(storage=PERMUTATION, index_dtype=idx_dtype.name,
                   checksum=_checksum(bank),
                   offset=sections.add(f"index_{idx_dtype.name}",
                                       index.astype(idx_dtype)))
    stored[_shown(leaf_path)] = entry["storage"]
    entries.append(entry)
  metadata = dict(format=FORMAT, version=VERSION, byteorder=sys.byteorder,
                  mode="bank" if init_fn is None else "init_fn", seed=seed,
                  structure=_structure(tree, paths), leaves=entries)
  arrays = sections.arrays()
  arrays[_METADATA] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
  save: Callable[..., None] = np.savez_compressed if compress else np.savez
  # Written beside the target, then renamed: a failure leaves no torn file.
  fd, tmp = tempfile.mkstemp(prefix=".sgperm-", suffix=".npz",
                             dir=os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "wb") as f:
      save(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  file_bytes = os.path.getsize(path)
  raw32 = 4 * sum(int(np.size(x)) for x in leaves)
  return dict(path=path, mode=metadata["mode"], leaves=stored,
              file_bytes=file_bytes, raw_float32_bytes=raw32,
              ratio=file_bytes / raw32 if raw32 else math.inf)


# ------------------------------------------------------------------ loading


def _not_ours(path: str, why: str) -> ValueError:
  return ValueError(f"sgperm_jax: load_permutation: {path!r} is not a file"
                    f" written by save_permutation ({why})")


def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"sgperm_jax: load_permutation: no file {path!r}")
  try:
    with open(path, "rb") as f:
      data = f.read()
    npz = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
      raise _not_ours(path, "a single NumPy array")
    with npz:
      arrays = {name: npz[name] for name in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if str(e).startswith("sgperm_jax:"):
      raise
    raise _not_ours(path, f"{type(e).__name__}: {e}") from e
  raw_meta = arrays.pop(_METADATA, None)
  try:
    metadata = json.loads(bytes(raw_meta).decode()) if (
        raw_meta is not None) else None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _not_ours(path, "its metadata is not JSON") from e
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise _not_ours(path, "no sgperm_jax metadata")
  if metadata.get("version") != VERSION:
    raise ValueError(
        f"sgperm_jax: load_permutation: {path!r} has format version"
        f" {metadata.get('version')!r}; this sgperm_jax reads version"
        f" {VERSION}")
  if metadata.get("mode") not in ("bank", "init_fn") or not isinstance(
      metadata.get("leaves"), list):
    raise _not_ours(path, "its metadata has no valid mode and leaves")
  if metadata.get("byteorder", sys.byteorder) != sys.byteorder:
    raise ValueError(
        f"sgperm_jax: load_permutation: {path!r} was written on a"
        f" {metadata['byteorder']}-endian machine")
  return metadata, arrays


def _section(arrays: dict[str, np.ndarray], name: str, offset: int,
             count: int, path: str) -> np.ndarray:
  section = arrays.get(name)
  if section is None or offset + count > section.size:
    raise ValueError(f"sgperm_jax: load_permutation: leaf {_shown(path)}:"
                     f" the file is truncated (section {name!r})")
  return section[offset:offset + count]


def _load_leaf(entry: dict[str, Any], arrays: dict[str, np.ndarray],
               initial: dict[str, np.ndarray] | None, seed: Any
               ) -> np.ndarray:
  path, spec = entry["path"], entry["layout"]
  shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
  count = math.prod(shape)
  if entry["storage"] == RAW:
    raw = _section(arrays, "raw", entry["offset"], count * dtype.itemsize,
                   path)
    return raw.view(dtype).reshape(shape).copy()
  rows, n = _layout.row_shape(shape, spec) or (0, 0)
  if initial is None:
    bits = np.dtype(f"u{dtype.itemsize}")
    bank = _section(arrays, f"bank_{bits.name}", entry["bank_offset"], count,
                    path).view(dtype).reshape(rows, n)
  else:
    bank = _initial_bank(initial, path, shape, dtype, spec, seed,
                         "load_permutation")
  if _checksum(bank) != entry["checksum"]:
    raise ValueError(
        f"sgperm_jax: load_permutation: leaf {_shown(path)}: the initial"
        " values do not match the saved checksum"
        + (f" (wrong init_fn, or a seed other than {seed!r}?)"
           if initial is not None else " (the file is corrupt)"))
  index = _section(arrays, f"index_{entry['index_dtype']}", entry["offset"],
                   count, path).reshape(rows, n).astype(np.intp)
  if index.size and not np.array_equal(np.sort(index, axis=-1),
                                       np.broadcast_to(np.arange(n),
                                                       index.shape)):
    raise ValueError(f"sgperm_jax: load_permutation: leaf {_shown(path)}:"
                     " the indices of a row are not a permutation of it"
                     " (the file is corrupt)")
  values = np.take_along_axis(bank, index, axis=-1)
  return np.ascontiguousarray(_layout.from_rows(cast(Any, values), spec,
                                                shape))


def _into(like: Any, metadata: dict[str, Any], leaves: dict[str, np.ndarray]
          ) -> Any:
  """The loaded leaves in the structure of the template ``like``."""
  like = _pure(like)
  paths, templates = _flat(like)
  saved = [e["path"] for e in metadata["leaves"]]
  missing = [p for p in paths if p not in leaves]
  extra = [p for p in saved if p not in set(paths)]
  if missing or extra:
    raise ValueError(
        "sgperm_jax: load_permutation: like does not have the saved leaves:"
        + (f" like has {', '.join(map(_shown, missing))} which the file"
           " lacks;" if missing else "")
        + (f" the file has {', '.join(map(_shown, extra))} which like"
           " lacks" if extra else ""))
  for path, template in zip(paths, templates):
    x = leaves[path]
    shape = getattr(template, "shape", None)
    dtype = getattr(template, "dtype", None)
    if (shape is not None and tuple(shape) != x.shape) or (
        dtype is not None and np.dtype(dtype) != x.dtype):
      raise ValueError(
          f"sgperm_jax: load_permutation: leaf {_shown(path)} is saved as"
          f" {x.dtype}{list(x.shape)}; like has"
          f" {np.dtype(dtype) if dtype is not None else '?'}"
          f"{list(shape) if shape is not None else ''}")
  return jax.tree.structure(like).unflatten([leaves[p] for p in paths])


def load_permutation(path: PathLike, like: Any = None,
                     init_fn: Callable[[Any], Any] | None = None) -> Any:
  """Reads a file of :func:`save_permutation` back, bit for bit.

  Args:
    path: the file.
    like: optional template: a tree with the saved key paths (the params
      when saved, a ``jax.eval_shape`` of them, a Flax NNX state); the
      result has its structure. Without it, the saved nested dicts, lists
      and tuples are rebuilt (Flax NNX states come back as nested dicts);
      a tree with other nodes (named tuples, dataclasses) needs ``like``.
    init_fn: the ``init_fn`` the file was saved with, if it was (it is
      called with the saved seed); not used otherwise.

  Returns:
    The saved tree, its leaves NumPy arrays of the saved shapes and dtypes
    (``jax.tree.map(jnp.asarray, tree)`` puts them on a device).

  Raises:
    FileNotFoundError: if there is no file at ``path``.
    ValueError: if the file was not written by :func:`save_permutation`
      or is damaged; if it needs ``init_fn`` and none is given (or one is
      given that it does not need); if ``init_fn``'s initial values do not
      give the saved checksums (the message names the first such leaf); if
      ``like`` does not have the saved leaves and shapes, or is needed and
      not given.

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from sgperm_jax.export import save_permutation, load_permutation
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> _ = save_permutation(path, {"w": jnp.array([[2., 0.], [1., 3.]])})
    >>> load_permutation(path)["w"].tolist()
    [[2.0, 0.0], [1.0, 3.0]]
  """
  path = _check_path(path, "load_permutation")
  metadata, arrays = _read(path)
  seed = metadata.get("seed")
  if metadata["mode"] == "init_fn" and init_fn is None:
    raise ValueError(
        f"sgperm_jax: load_permutation: {path!r} was saved with init_fn"
        f" (seed {seed!r}) and stores no initial values: pass that init_fn")
  if metadata["mode"] == "bank" and init_fn is not None:
    raise ValueError(
        f"sgperm_jax: load_permutation: {path!r} holds its initial values;"
        " init_fn is not needed")
  initial = (None if init_fn is None
             else _initial_leaves(init_fn, seed))
  try:
    leaves = {e["path"]: _load_leaf(e, arrays, initial, seed)
              for e in metadata["leaves"]}
  except (KeyError, TypeError) as e:
    raise _not_ours(path, f"bad metadata: {type(e).__name__} {e}") from e
  if like is not None:
    return _into(like, metadata, leaves)
  if metadata["structure"] == _UNSUPPORTED:
    raise ValueError(
        f"sgperm_jax: load_permutation: the tree saved in {path!r} has nodes"
        " other than dicts, lists and tuples: pass a template as like=")
  return _decode(metadata["structure"], leaves)
