"""The benchmark command runs and reports what it promises."""

import json

import sgperm_jax
from sgperm_jax import bench


def test_bench_prints_the_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert bench.main(["--models", "mlp", "--ratios", "1.0", "--repeats", "1",
                     "--scaling-total", "2000", "--scaling-lengths", "100,1000",
                     "--cycle-search", "auto,loop", "--json", str(out)]) == 0
  table = capsys.readouterr().out
  assert "MLP 784-300-100-10" in table and "SGPerm/floor" in table
  data = json.loads(out.read_text())
  row, loop = data["models"]
  assert row["cycle_search"] == sgperm_jax.auto_method("cpu")
  assert loop["cycle_search"] == "loop"
  assert row["params"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
  assert row["sgperm_s"] > 0 and row["sort_floor_s"] > 0 and row["adam_s"] > 0
  assert 1.5 < row["state_over_params"] <= 3  # momentum + exact weights
  assert [r["row_length"] for r in data["scaling"]] == [100, 100, 1000, 1000]


def test_bench_rejects_an_unknown_cycle_search(capsys):
  try:
    bench.main(["--cycle-search", "fast"])
  except SystemExit as e:
    assert e.code == 2
  else:
    raise AssertionError("no error")
  assert "--cycle-search" in capsys.readouterr().err
