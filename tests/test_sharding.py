"""Sharded parameters: bit-identical to one device, no communication.

Runs in a subprocess with 8 simulated CPU devices, since the device count
must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import contextlib, re
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    import sgperm_jax

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"dense": {"kernel": jax.random.normal(k1, (40, 16)),
                        "bias": jax.random.normal(k2, (16,))},
              "conv": {"kernel": jax.random.normal(k3, (4, 3, 2, 8))}}
    loss = lambda p: sum(jnp.sum(jnp.sin(3 * x) * x) for x in
                         jax.tree.leaves(p))
    kw = dict(alpha0=0.8, lamda0=0.3, partition_size_min=3, seed=4)

    def run(tx, params, steps=6):
      state = tx.init(params)
      step = jax.jit(lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
          *tx.update(jax.grad(loss)(p), s, p)))
      for _ in range(steps):
        params, state = step(params, state)
      return params, state, step

    ref_params, ref_state, _ = run(sgperm_jax.sgperm(**kw), params)
    ref_exact = sgperm_jax.exact_params(ref_params, ref_state)

    rows = {"dense": {"kernel": P(None, ("data", "model")), "bias": P()},
            "conv": {"kernel": P(None, None, None, ("data", "model"))}}
    other = {"dense": {"kernel": P("data", "model"), "bias": P("model")},
             "conv": {"kernel": P("data", None, None, "model")}}
    # Rows split over one axis, replicated over the other.
    some = {"dense": {"kernel": P(None, "model"), "bias": P()},
            "conv": {"kernel": P(None, None, None, "data")}}

    def check(name, mesh, specs, tx, context=contextlib.nullcontext()):
      shard = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                           is_leaf=lambda x: isinstance(x, P))
      sharded = jax.device_put(params, shard)
      with context:
        p, s, step = run(tx, sharded)
        exact = sgperm_jax.exact_params(p, s)
        jax.tree.map(np.testing.assert_array_equal, exact, ref_exact)
        jax.tree.map(np.testing.assert_array_equal, p, ref_params)
        for leaf, sh in zip(jax.tree.leaves(p), jax.tree.leaves(shard)):
          assert leaf.sharding.is_equivalent_to(sh, leaf.ndim), (
              name, leaf.sharding, sh)
        if specs is not other:
          hlo = jax.jit(tx.update).lower(jax.grad(loss)(sharded), s, sharded
                                         ).compile().as_text()
          found = re.findall(r"all-gather|all-reduce|all-to-all|"
                             r"collective-permute|reduce-scatter", hlo)
          assert not found, (name, sorted(set(found)))

    # The mesh given as an argument.
    for specs in (rows, other):
      check("mesh=", mesh, specs, sgperm_jax.sgperm(**kw, mesh=mesh))
    # No argument: the mesh of jax.set_mesh, with automatic axes ...
    auto = jax.make_mesh((4, 2), ("data", "model"),
                         axis_types=(AxisType.Auto,) * 2)
    check("ambient", auto, rows, sgperm_jax.sgperm(**kw), jax.set_mesh(auto))
    # ... and with explicit axes, whose shardings the leaves' types carry.
    explicit = jax.make_mesh((4, 2), ("data", "model"),
                             axis_types=(AxisType.Explicit,) * 2)
    for specs in (rows, some, other):
      check("explicit", explicit, specs, sgperm_jax.sgperm(**kw),
            jax.set_mesh(explicit))
    print("OK")
""")


@pytest.mark.slow
def test_sharded_runs_are_bit_identical_and_local():
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "OK" in out.stdout
