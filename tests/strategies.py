"""Random inputs for the stages, shared by the tests of the cycle searches.

Rows are drawn from a small palette of values (many ties), recommendations
have zeros, non-finite entries and tied magnitudes, and the partition size,
aggressiveness and remainder rule vary: the cases where the stages and the
searches are easiest to get wrong.
"""

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
ALPHAS = (0.0, 0.01, 0.3, 1.0, 5.0)


def random_rows(rng, rows, n, distinct, scale=1.0, zeros=0.0, special=0.0,
                tied=0.0):
  """``(w, r)`` float64 arrays of shape ``(rows, n)``.

  Args:
    rng: a NumPy generator.
    rows: number of rows.
    n: row length.
    distinct: how many distinct values the rows draw from.
    scale: scale of the values.
    zeros: fraction of recommendations set to 0.
    special: fraction set to NaN or +-inf.
    tied: fraction rounded to one decimal (ties in ``|r|``).
  """
  palette = rng.normal(size=distinct) * scale
  w = palette[rng.integers(0, distinct, size=(rows, n))]
  r = rng.normal(size=(rows, n))
  r = np.where(rng.random((rows, n)) < tied, np.round(r, 1), r)
  r[rng.random((rows, n)) < zeros] = 0.0
  mask = rng.random((rows, n)) < special
  r[mask] = rng.choice([np.nan, np.inf, -np.inf], size=mask.sum())
  return w, r


@st.composite
def stage_inputs(draw, shapes_, dtypes=tuple(DTYPES)):
  """``(w, r, size, alpha, include_partition_remainder, seed)``, for stages."""
  rows, n = draw(st.sampled_from(shapes_))
  dtype = draw(st.sampled_from(sorted(dtypes)))
  seed = draw(st.integers(0, 2**31 - 1))
  w, r = random_rows(
      np.random.default_rng(seed), rows, n, distinct=draw(st.integers(1, n)),
      scale=draw(st.sampled_from([1e-3, 1., 1e3])),
      zeros=draw(st.floats(0, 0.5)), special=draw(st.floats(0, 0.2)),
      tied=draw(st.sampled_from([0.0, 0.3, 1.0])))
  size = draw(st.integers(1, n + 2))
  alpha = draw(st.sampled_from(ALPHAS))
  remainder = draw(st.booleans())
  return (jnp.asarray(w, DTYPES[dtype]), jnp.asarray(r, jnp.float32), size,
          alpha, remainder, seed)
