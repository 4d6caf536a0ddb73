"""LaPerm vs Adam on scikit-learn's 8x8 digits: the sweep behind its defaults.

Run from the repository root:

  python -m tests.laperm_sweep HIDDEN EPOCHS K1,K2,... [--sync-vectors]

Uses the setup of tests/test_laperm.py (``digits_accuracy``): a 64-HIDDEN-10
ReLU MLP (LeCun-normal kernels, zero biases), batch 64, 75/25 stratified split
(random_state=0), 8 seeds vmapped; LaPerm is scored on its synced weights
(``sgperm_jax.exact_params``).
"""

import sys
import time

import numpy as np
import optax

import sgperm_jax


def main():
  from tests import test_laperm as setup  # noqa: PLC0415 (lazy import)
  setup._HIDDEN, setup._EPOCHS = int(sys.argv[1]), int(sys.argv[2])
  ks = [int(k) for k in sys.argv[3].split(",")]
  sync_vectors = "--sync-vectors" in sys.argv
  data = setup._digits()

  configs = [("adam(1e-3)", optax.adam(1e-3), False)]
  for k in ks:
    name = f"laperm(adam(1e-3), {k}" + (
        ", skip_vectors=False)" if sync_vectors else ")")
    configs.append((name, sgperm_jax.laperm(
        optax.adam(1e-3), k, skip_vectors=not sync_vectors), True))
  for name, tx, exact in configs:
    t = time.time()
    acc, _ = setup.digits_accuracy(tx, exact, data)
    acc = np.asarray(acc)
    print(f"| {setup._HIDDEN} | {setup._EPOCHS} | `{name}` |"
          f" {acc.mean():.2f} ± {acc.std():.2f} | {acc.min():.2f} |"
          f" {time.time() - t:.0f} s |", flush=True)


if __name__ == "__main__":
  main()
