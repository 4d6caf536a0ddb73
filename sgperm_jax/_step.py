"""One permutation step of every row of every leaf: the stages composed.

:func:`permutation_step` runs the step once on all rows of all permuted
leaves of a dtype, so that the compiled program is the same size whatever
the number of leaves (``_packing.py`` says where the rows are):

* on CPU, one native kernel does the whole step of every row, reading and
  writing the leaves as they are (``_native.permute_leaves_native``,
  bit-identical to the stages);
* elsewhere (and on CPU with ``cycle_search="loop"`` or ``"pallas"``), the
  leaves are concatenated, their rows gathered into tiles, and the four JAX
  stages run once on them: :func:`partition`, :func:`permissibility_graph`,
  :func:`find_cycles` and :func:`permute`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from sgperm_jax import _cycles
from sgperm_jax import _layout
from sgperm_jax import _native
from sgperm_jax import _packing
from sgperm_jax import _sharding
from sgperm_jax._cycles import check_cycle_search
from sgperm_jax._graph import permissibility_graph
from sgperm_jax._partition import partition_size, partition_tiles, slot_bits
from sgperm_jax._partition import as_threefry, typed_key
from sgperm_jax._permute import permute
from sgperm_jax._sorting import wide_ints


class StepHyperparams(NamedTuple):
  """The numbers of one permutation step (Python numbers or traced)."""
  alpha: chex.Numeric  # aggressiveness alpha_t
  lamda: chex.Numeric  # partition ratio lamda_t
  partition_size_min: chex.Numeric  # smallest partition size
  include_partition_remainder: chex.Numeric  # whether a short chunk moves


def delta(weights: jax.Array, params: Any) -> jax.Array:
  """The update that moves ``params`` onto ``weights``, in the params' dtype.

  Where ``weights - params`` overflows (values near the dtype's max with
  opposite signs), the update sends the slot to 0 instead of to infinity; the
  next step, which starts from the exact weights again, lands it.
  """
  params = jnp.asarray(params)
  d = (weights - params).astype(params.dtype)
  if not jnp.issubdtype(d.dtype, jnp.floating):
    return d  # leaves left alone (integer, complex): plain difference
  # Whether the rounded difference is finite, from its bits: XLA may keep a
  # bfloat16 difference in float32 for a float test (excess precision).
  bits = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[d.dtype.itemsize]
  finfo = jnp.finfo(d.dtype)
  exponent = ((1 << finfo.nexp) - 1) << finfo.nmant
  finite = (lax.bitcast_convert_type(d, bits) & exponent) != exponent
  return jnp.where(finite | ~jnp.isfinite(params), d, -params)


class _Group(NamedTuple):
  """The leaves of one dtype, as the step takes them (all lists by leaf)."""
  weights: list[jax.Array]
  recs: list[jax.Array]  # all of one dtype
  initial: list[jax.Array] | None  # the params, for the start and updates
  started: jax.Array  # bool: permute ``weights`` (else ``initial``)
  size: jax.Array  # (R,) int32 partition size of each row
  keys: jax.Array  # (R,) typed PRNG key of each row


def _native_step(table: _packing.RowTable, group: _Group, hp: StepHyperparams):
  """The whole step, natively on CPU: new weights, and updates."""
  with wide_ints():
    return _native.permute_leaves_native(
        group.weights, group.recs, offset=table.offset, stride=table.stride,
        length=table.length, leaf=table.leaf, size=group.size,
        keys=jax.random.key_data(group.keys), alpha=hp.alpha,
        include_partition_remainder=hp.include_partition_remainder,
        initial=group.initial, started=group.started)


def _value_range(values: jax.Array, slots: _packing.Slots, rows: int
                 ) -> jax.Array:
  """``max(row) - min(row)`` of every row (NaN if it holds a NaN), (R,)."""
  v = values.astype(_layout.compute_dtype(values.dtype)).ravel()
  row = slots.row.ravel()
  nan = jnp.isnan(v)
  top = jax.ops.segment_max(jnp.where(nan, -jnp.inf, v), row, rows + 1)
  bottom = jax.ops.segment_min(jnp.where(nan, jnp.inf, v), row, rows + 1)
  any_nan = jax.ops.segment_max(nan.astype(jnp.int32), row, rows + 1) > 0
  return jnp.where(any_nan, jnp.nan, top - bottom)[:rows]


def _stages_step(table: _packing.RowTable, group: _Group,
                 hp: StepHyperparams, backend: str):
  """The step by the four JAX stages, on the rows gathered into tiles."""
  flat = lambda leaves: jnp.concatenate([jnp.ravel(x) for x in leaves])
  values = flat(group.weights)
  if group.initial is not None:
    values = jnp.where(group.started, values, flat(group.initial))
  recs = flat(group.recs)
  out = values
  for tiles, _ in _packing.tiles_of(table):
    slots = _packing.slots(tiles)
    index = _packing.gather_index(table, slots)
    tile_values = jnp.where(slots.valid, values[index], 0)
    row = jnp.minimum(slots.row, tiles.rows - 1)
    column = lax.broadcasted_iota(jnp.int32, row.shape, 1)
    part = partition_tiles(
        tile_values, jnp.where(slots.valid, recs[index], 0),
        start=slots.start,
        length=jnp.where(slots.valid, jnp.asarray(table.length)[row], 1),
        size=jnp.where(slots.valid, group.size[row], 1), valid=slots.valid,
        include_partition_remainder=hp.include_partition_remainder,
        bits=functools.partial(slot_bits, group.keys, row,
                               column - slots.start),
        shared=tiles.shared)
    value_range = _value_range(tile_values, slots, tiles.rows)
    graph = permissibility_graph(
        part, hp.alpha, jnp.where(slots.valid, value_range[row], 0))
    moved = permute(part, _cycles.search([part], [graph], backend)[0])
    out = out.at[jnp.where(slots.valid, index, out.shape[0])].set(
        moved, mode="drop", unique_indices=True)
  starts = np.cumsum((0,) + table.sizes)
  split = lambda x: [x[a:b].reshape(w.shape) for a, b, w in
                     zip(starts[:-1], starts[1:], group.weights)]
  updates = (None if group.initial is None
             else split(delta(out, flat(group.initial))))
  return split(out), updates


def _step(table: _packing.RowTable, group: _Group, hp: StepHyperparams,
          cycle_search: str):
  """The step of one group, by the path ``cycle_search`` takes on the
  platform the step is lowered for: the native kernel, or the stages with
  the loop or a Pallas search."""
  def run(group, hp, backend):
    if backend == "native":
      return _native_step(table, group, hp)
    return _stages_step(table, group, hp, backend)
  return _cycles.on_platform(run, cycle_search, group, hp)


class _Leaf(NamedTuple):
  """A leaf to permute."""
  position: int  # its position among the tree's leaves
  weights: jax.Array
  recs: jax.Array
  layout: _layout.RowLayout
  initial: jax.Array | None  # the params (see :func:`permute_tree`)


def _permute_leaves(key: jax.Array, leaves: list[_Leaf],
                    row_offsets: list[jax.Array | int], hp: StepHyperparams,
                    cycle_search: str, started: jax.Array | None):
  """The step on ``leaves``: their permuted weights, and updates (or None).

  Leaves of one dtype are permuted together (their recommendations promoted
  to one dtype, exactly); each row's randomness is drawn from
  ``fold_in(fold_in(key, tree index), row + row_offset)``.
  """
  key = typed_key(key)
  with_initial = leaves[0].initial is not None
  started = jnp.asarray(True if started is None else started)
  groups: dict[Any, list[int]] = {}
  for i, leaf in enumerate(leaves):
    groups.setdefault(jnp.dtype(leaf.weights.dtype), []).append(i)
  new: list[Any] = [None] * len(leaves)
  updates: list[Any] = [None] * len(leaves)
  for members in groups.values():
    chosen = [leaves[i] for i in members]
    table = _packing.row_table([(leaf.position, jnp.shape(leaf.weights),
                                 leaf.layout) for leaf in chosen])
    offsets = jnp.stack([jnp.asarray(row_offsets[i], jnp.int32)
                         for i in members])
    row_ids = table.row_in_leaf + offsets[table.leaf]
    recs_dtype = jnp.result_type(*(leaf.recs for leaf in chosen))
    group = _Group(
        weights=[leaf.weights for leaf in chosen],
        recs=[leaf.recs.astype(recs_dtype) for leaf in chosen],
        initial=([leaf.initial for leaf in chosen  # type: ignore[misc]
                  ] if with_initial else None),
        started=started,
        size=partition_size(hp.lamda, table.length, hp.partition_size_min),
        keys=as_threefry(jax.vmap(lambda i, j: jax.random.fold_in(
            jax.random.fold_in(key, i), j))(table.leaf_index, row_ids)))
    out, deltas = _step(table, group, hp, cycle_search)
    for k, i in enumerate(members):
      new[i] = out[k]
      updates[i] = deltas[k] if with_initial else None
  return new, (updates if with_initial else None)


def _permute_leaves_sharded(mesh: Any, key: jax.Array, leaves: list[_Leaf],
                            hp: StepHyperparams, cycle_search: str,
                            started: jax.Array | None):
  """Like :func:`_permute_leaves`, each device on its own rows, no collectives.

  Each leaf's rows are split over the mesh axes that ``_sharding.row_axes``
  gives (the axes of its last dimension), or computed whole on every
  device. Rows are independent and draw their randomness from their global
  index, so the result equals the single-device one bit for bit. The
  updates are computed outside, so that they follow the params' sharding.
  """
  axes = [_sharding.row_axes(leaf.weights, leaf.layout, mesh)
          for leaf in leaves]
  specs = [_sharding.leaf_spec(leaf.weights, a)
           for leaf, a in zip(leaves, axes)]
  hp = StepHyperparams(*(jnp.asarray(x) for x in hp))
  started = jnp.asarray(True if started is None else started)
  with_initial = leaves[0].initial is not None

  def local(key, ws, rs, initial, hp, started):
    offsets = [lax.axis_index(a) * jnp.shape(w)[-1] if a else 0
               for a, w in zip(axes, ws)]
    local_leaves = [
        _Leaf(leaf.position, w, r, leaf.layout, w0 if with_initial else None)
        for leaf, w, r, w0 in zip(leaves, ws, rs, initial)]
    return _permute_leaves(key, local_leaves, offsets, hp, cycle_search,
                           started)[0]

  def placed(xs):
    return [_sharding.as_spec(x, spec) for x, spec in zip(xs, specs)]

  new = jax.shard_map(
      local, mesh=mesh,
      in_specs=(P(), specs, specs, specs, StepHyperparams(*[P()] * 4), P()),
      out_specs=specs, check_vma=False)(
          key, placed([leaf.weights for leaf in leaves]),
          placed([leaf.recs for leaf in leaves]),
          placed([leaf.initial if with_initial else leaf.weights
                  for leaf in leaves]), hp, started)
  new = [_sharding.like(w, leaf.weights) for w, leaf in zip(new, leaves)]
  if not with_initial:
    return new, None
  return new, [delta(w, leaf.initial) for w, leaf in zip(new, leaves)]


def permute_tree(key: jax.Array, weights: Any, recommendations: Any,
                 hp: StepHyperparams, *, layout: _layout.LayoutSpec,
                 mesh: jax.sharding.Mesh | None, cycle_search: str,
                 initial: Any = None, started: jax.Array | None = None
                 ) -> tuple[Any, Any]:
  """:func:`permutation_step` with its hyperparameters in one tuple.

  With ``initial`` (the params, a tree like ``weights``), the step permutes
  ``initial`` instead of ``weights`` where ``started`` is False, and also
  returns the updates that move ``initial`` onto the permuted weights
  (:func:`delta`); leaves that do not move get the update to ``weights``.

  Returns:
    ``(new weights, updates)``, trees like ``weights``; updates are None
    without ``initial``.
  """
  check_cycle_search(cycle_search)
  if cycle_search == "native" and not _native.available():
    raise RuntimeError("sgperm_jax: cycle_search='native' needs the native"
                       " CPU kernel, which is unavailable here:"
                       f" {_native.load_error()}")
  specs = _layout.resolve_layout(layout, weights)
  leaves = jax.tree.leaves(weights)
  treedef = jax.tree.structure(weights)
  paths = _layout.leaf_paths(weights)
  try:
    recs = treedef.flatten_up_to(recommendations)
  except (ValueError, TypeError) as e:
    raise ValueError("sgperm_jax: recommendations must have the structure of"
                     f" the weights ({treedef})") from e
  spec_leaves = treedef.flatten_up_to(specs)
  firsts = (treedef.flatten_up_to(initial) if initial is not None
            else [None] * len(leaves))
  new, updates = list(leaves), list(leaves)
  moving = []
  for i, (w, r, spec, path) in enumerate(zip(leaves, recs, spec_leaves, paths)):
    if _layout.row_shape(jnp.shape(w), spec) is None:
      first = firsts[i]
      if first is not None:  # left alone: the update is a plain difference
        new[i] = (w if started is None else jnp.where(
            started, w, first).astype(jnp.result_type(w)))
        updates[i] = delta(new[i], first)
      continue
    _layout.check_float_leaf(w, path)
    if jnp.shape(r) != jnp.shape(w):
      raise ValueError(f"sgperm_jax: recommendation for leaf {path} has shape"
                       f" {jnp.shape(r)}, the leaf has {jnp.shape(w)}")
    moving.append(_Leaf(i, jnp.asarray(w), jnp.asarray(r), spec,
                        None if initial is None else jnp.asarray(firsts[i])))
  if moving and mesh is None:
    mesh = _sharding.find_mesh([leaf.weights for leaf in moving])
  if moving:
    if mesh is None:
      out, deltas = _permute_leaves(key, moving, [0] * len(moving), hp,
                                    cycle_search, started)
    else:
      out, deltas = _permute_leaves_sharded(mesh, key, moving, hp,
                                            cycle_search, started)
    for k, leaf in enumerate(moving):
      new[leaf.position] = out[k]
      if deltas is not None:
        updates[leaf.position] = deltas[k]
  new = jax.tree.unflatten(treedef, new)
  return new, (None if initial is None
               else jax.tree.unflatten(treedef, updates))


def permutation_step(key: jax.Array, weights: Any, recommendations: Any, *,
                     alpha: chex.Numeric, lamda: chex.Numeric,
                     layout: _layout.LayoutSpec = "neurons",
                     partition_size_min: chex.Numeric = 10,
                     include_partition_remainder: chex.Numeric = True,
                     mesh: jax.sharding.Mesh | None = None,
                     cycle_search: str = "auto") -> Any:
  """One SGPerm permutation of every row of every leaf.

  See docs/algorithm.md §5-§8.

  Composes :func:`partition`, :func:`permissibility_graph`,
  :func:`find_cycles` and :func:`permute`, run once on all rows of all
  leaves of a dtype (on CPU, one native kernel does all four on every row,
  with the same result), so the compiled step does not grow with the number
  of leaves.

  Args:
    key: PRNG key for the random partitions (folded in per leaf and row).
    weights: tree of the current, exact weights.
    recommendations: tree like ``weights``; ``r > 0`` asks for a smaller value.
    alpha: aggressiveness ``alpha_t``.
    lamda: partition ratio ``lamda_t``.
    layout: row layout per leaf (see :func:`sgperm`).
    partition_size_min: smallest partition size.
    include_partition_remainder: whether a shorter last chunk takes part.
    mesh: optional device mesh; each device then permutes its own share of
      the rows with no communication (see :func:`sgperm`).
    cycle_search: how cycles are searched (see :func:`find_cycles`):
      ``"auto"``, ``"loop"``, ``"native"`` or ``"pallas"``; all give the
      same result.

  Returns:
    The permuted weights, a tree like ``weights``; every row holds exactly
    the values it held before.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> w = {"b": jnp.array([0., 1., 2., 3.])}
    >>> r = {"b": jnp.array([-1., 1., -1., 1.])}
    >>> sgperm_jax.permutation_step(jax.random.key(0), w, r, alpha=0.5,
    ...                             lamda=1.0)["b"].tolist()
    [1.0, 0.0, 3.0, 2.0]
  """
  return permute_tree(key, weights, recommendations,
                      StepHyperparams(alpha, lamda, partition_size_min,
                                      include_partition_remainder),
                      layout=layout, mesh=mesh, cycle_search=cycle_search)[0]
