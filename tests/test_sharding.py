"""Sharded parameters: bit-identical to one device, no communication.

Runs in a subprocess with 8 simulated CPU devices, since the device count
must be set before JAX starts.
"""

import textwrap

import pytest

from tests import helpers

_SCRIPT = textwrap.dedent("""
    import os
    # LLVM's optimisations off (before JAX starts): compiling takes about half
    # the time, and what is checked here does not depend on them.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
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
    # The dense rows split over both axes, the conv rows over one axis and
    # replicated over the other.
    mixed = {"dense": {"kernel": P(None, ("data", "model")), "bias": P()},
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
        # The compiled step (cached: no new compilation) communicates only
        # where rows are split over devices (the control: other).
        hlo = step.lower(p, s).compile().as_text()
        found = re.findall(r"all-gather|all-reduce|all-to-all|"
                           r"collective-permute|reduce-scatter", hlo)
        assert bool(found) == (specs is other), (name, sorted(set(found)))

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
    for specs in (mixed, other):
      check("explicit", explicit, specs, sgperm_jax.sgperm(**kw),
            jax.set_mesh(explicit))
    print("OK")
""")


@pytest.mark.slow
def test_sharded_runs_are_bit_identical_and_local():
  helpers.run_with_8_devices(_SCRIPT)


_LAPERM_AND_STATS = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import sgperm_jax

    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    params = {"w": jax.random.normal(jax.random.key(0), (16, 32)),
              "b": jnp.linspace(-1.0, 1.0, 32)}
    # rows split over the devices (a row split within itself sums its
    # centring mean in another order: not bit-identical)
    shardings = {"w": P(None, "x"), "b": P()}

    def run(tx, p):
      state = tx.init(p)
      step = jax.jit(lambda p, s: (lambda u, s: (
          optax.apply_updates(p, u), s))(*tx.update(
              jax.tree.map(jnp.sin, p), s, p)))
      for _ in range(4):
        p, state = step(p, state)
      return (sgperm_jax.exact_params(p, state),
              sgperm_jax.permutation_stats(state)["w"])

    for tx in (sgperm_jax.sgperm(lamda0=0.5, track_stats=True),
               sgperm_jax.laperm(optax.adam(0.1), sync_period=2,
                                 track_stats=True)):
      with jax.set_mesh(mesh):
        sharded = jax.device_put(params, jax.tree.map(
            lambda s: NamedSharding(mesh, s), shardings))
        exact, stats = run(tx, sharded)
        for k, s in shardings.items():
          assert exact[k].sharding.is_equivalent_to(
              NamedSharding(mesh, s), exact[k].ndim), (k, exact[k].sharding)
      want_exact, want_stats = run(tx, jax.tree.map(np.asarray, params))
      for k in params:
        np.testing.assert_array_equal(np.asarray(exact[k]),
                                      np.asarray(want_exact[k]))
      assert all(bool(a == b) for a, b in zip(stats, want_stats)), stats
      assert float(stats.moved_fraction) > 0
    print("OK")
""")


@pytest.mark.slow
def test_laperm_and_stats_with_explicit_sharding_match_one_device():
  helpers.run_with_8_devices(_LAPERM_AND_STATS)
