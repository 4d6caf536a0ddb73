"""A literal, slow NumPy transcription of the step, used as the test oracle.

The step is docs/algorithm.md §5-§8. Written from the algorithm's
description, not from the library: Python lists, an explicit edge list per
vertex and a plain depth-first search.
"""

from __future__ import annotations

import numpy as np


def row_step(w, r, value_range, alpha, subsets):
  """One SGPerm step on one row.

  Args:
    w: the row's values (1-D array).
    r: its recommendations (non-finite or 0: inactive).
    value_range: ``A``.
    alpha: aggressiveness.
    subsets: list of lists of positions, each in its subset order.

  Returns:
    The new row.
  """
  w = np.asarray(w)
  out = w.copy()
  cdt = np.promote_types(w.dtype, np.float32)
  for subset in subsets:
    act = [p for p in subset if np.isfinite(r[p]) and r[p] != 0]
    m = len(act)
    if m < 2:
      continue
    eps = cdt.type(value_range) * (cdt.type(alpha) + cdt.type(1) / cdt.type(m))
    order = sorted(range(m), key=lambda i: w[act[i]].astype(cdt))  # stable
    pos = [act[i] for i in order]
    v = [w[p].astype(cdt) for p in pos]
    rr = [r[p] for p in pos]
    edges = []
    for i in range(m):
      if rr[i] < 0:
        edges.append([k for k in range(i + 1, m) if v[i] <= v[k] < v[i] + eps])
      else:
        edges.append([k for k in range(i - 1, -1, -1)
                      if v[i] - eps <= v[k] < v[i]])
    sources = sorted(range(m), key=lambda i: (-abs(rr[i]), -i))
    done = set()
    cycles = []
    for s in sources:
      if s in done:
        continue
      seen = set(done) | {s}
      path = [s]
      ptr = [0]
      found = False
      while path and not found:
        u = path[-1]
        if ptr[-1] >= len(edges[u]):
          path.pop()
          ptr.pop()
          continue
        k = edges[u][ptr[-1]]
        ptr[-1] += 1
        if k == s:
          found = True
        elif k not in seen:
          seen.add(k)
          path.append(k)
          ptr.append(0)
      if found:
        cycles.append(list(path))
        done.update(path)
      else:
        done.add(s)
    for c in cycles:
      vals = [w[pos[i]] for i in c]
      for j, i in enumerate(c):
        out[pos[i]] = vals[(j + 1) % len(c)]
  return out

