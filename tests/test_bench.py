"""The benchmark command runs and reports what it promises."""

import json

import pytest

import sgperm_jax
from sgperm_jax.experiments import bench


@pytest.mark.slow
def test_bench_prints_the_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert bench.main(["--models", "mlp", "--ratios", "1.0", "--repeats", "1",
                     "--scaling-total", "2000", "--scaling-lengths", "100",
                     "--cycle-search", "auto,native", "--laperm", "mlp",
                     "--json", str(out)]) == 0
  table = capsys.readouterr().out
  assert "MLP 784-300-100-10" in table and "SGPerm/floor" in table
  assert "compile s" in table and "int32 sort floor ms" in table
  data = json.loads(out.read_text())
  row, native = data["models"]
  assert row["cycle_search"] == sgperm_jax.auto_cycle_search("cpu")
  assert native["cycle_search"] == "native"
  assert row["params"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
  assert row["sgperm_s"] > 0 and row["sort_floor_s"] > 0 and row["adam_s"] > 0
  assert row["compile_s"] > 0 and row["argsort_floor_s"] > 0
  assert row["leaves"] == 6
  (lap,) = data["laperm"]
  assert lap["compile_s"] > 0 and lap["step_s"] > 0 and lap["sync_step_s"] > 0
  assert 1.5 < row["state_over_params"] <= 3  # momentum + exact weights
  assert [(r["row_length"], r["rows"]) for r in data["scaling"]] == [
      (100, 20), (100, 20)]  # one row per cycle search
  assert [r["cycle_search"] for r in data["scaling"]] == [
      row["cycle_search"], "native"]


def test_bench_rejects_an_unknown_cycle_search(capsys):
  try:
    bench.main(["--cycle-search", "fast"])
  except SystemExit as e:
    assert e.code == 2
  else:
    raise AssertionError("no error")
  assert "--cycle-search" in capsys.readouterr().err


def test_the_real_trees_have_their_shapes():
  """ResNet-18 for CIFAR, ResNet-50 and a 6-layer GPT, as the bench builds
  them (Flax layouts): leaf counts and sizes."""
  import jax  # noqa: PLC0415 (lazy import)
  counts = {}
  for name in ("resnet18", "resnet50", "gpt"):
    params = jax.eval_shape(bench.MODELS[name][1], jax.random.key(0))
    leaves = jax.tree.leaves(params)
    counts[name] = (len(leaves), sum(x.size for x in leaves))
  assert counts == {"resnet18": (62, 11_173_962), "resnet50": (161, 23_528_522),
                    "gpt": (73, 5_000_704)}
