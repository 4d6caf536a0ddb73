"""``sgperm-jax bench``: SGPerm and LaPerm beside Adam and the sort floors.

Everything is measured in one process, side by side: the median of repeated
jitted calls after a warm-up, and the seconds to trace, lower and compile
each update. Two *sort floors* say what sorting the model's weights costs:
one jitted ``jnp.sort`` of the int32 bit patterns of every weight vector
(XLA's cheapest sort of the same data), and one ``jnp.argsort`` of the float
weights (a comparator sort, slower).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sgperm_jax import _layout
from sgperm_jax import cli
from sgperm_jax import _native
from sgperm_jax._cycles import CYCLE_SEARCHES, auto_cycle_search
from sgperm_jax._laperm import laperm
from sgperm_jax._transform import sgperm


def _dense(key, sizes):
  params = {}
  for i, (a, b) in enumerate(itertools.pairwise(sizes)):
    key, k = jax.random.split(key)
    params[f"dense{i}"] = {
        "kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / (a + b)),
        "bias": jnp.zeros(b) + 0.01 * jnp.arange(b) / b}
  return params


def _conv4(key):
  """Conv4-style net for 28x28 inputs: 4 conv layers, 2 dense (~1.1M)."""
  params = {}
  channels = [1, 64, 64, 128, 128]
  for i, (a, b) in enumerate(itertools.pairwise(channels)):
    key, k = jax.random.split(key)
    params[f"conv{i}"] = {
        "kernel": jax.random.normal(k, (3, 3, a, b)) * jnp.sqrt(2.0 / (9 * a)),
        "bias": jnp.zeros(b) + 0.01 * jnp.arange(b) / b}
  params.update(_dense(key, [7 * 7 * 128, 128, 10]))
  return params


def _conv(key, h, w, a, b):
  return jax.random.normal(key, (h, w, a, b)) * jnp.sqrt(2.0 / (h * w * a))


def _norm(b):
  """A BatchNorm or LayerNorm: scale and bias vectors (slightly spread)."""
  return {"scale": 1.0 + 0.01 * jnp.arange(b) / b,
          "bias": 0.01 * jnp.arange(b) / b}


def _resnet(key, blocks, widths, bottleneck, stem):
  """Flax-layout ResNet params: conv kernels, BatchNorm scale/bias, head."""
  keys = iter(jax.random.split(key, 200))
  h, channels = stem
  params = {"stem": {"conv": _conv(next(keys), h, h, 3, channels),
                     "bn": _norm(channels)}}
  for stage, (count, width) in enumerate(zip(blocks, widths)):
    out = width * 4 if bottleneck else width
    for b in range(count):
      block = {}
      if bottleneck:
        shapes = [(1, channels, width), (3, width, width), (1, width, out)]
      else:
        shapes = [(3, channels, width), (3, width, width)]
      for i, (k, a, c) in enumerate(shapes):
        block[f"conv{i}"] = _conv(next(keys), k, k, a, c)
        block[f"bn{i}"] = _norm(c)
      if channels != out:
        block["shortcut"] = _conv(next(keys), 1, 1, channels, out)
        block["shortcut_bn"] = _norm(out)
      params[f"stage{stage}_block{b}"] = block
      channels = out
  params["head"] = _dense(next(keys), [channels, 10])["dense0"]
  return params


def _gpt(key, layers=6, d=256, vocab=1024):
  """Flax-layout GPT params: tied embedding, and per layer two LayerNorms,
  the attention's qkv and output projections and the MLP, with biases."""
  keys = iter(jax.random.split(key, 8 * layers + 1))
  dense = lambda a, b: {"kernel": jax.random.normal(next(keys), (a, b))
                        * jnp.sqrt(1.0 / a),
                        "bias": 0.01 * jnp.arange(b) / b}
  params = {"embed": jax.random.normal(next(keys), (vocab, d)) * 0.02}
  for i in range(layers):
    params[f"layer{i}"] = {
        "ln1": _norm(d), "qkv": dense(d, 3 * d), "proj": dense(d, d),
        "ln2": _norm(d), "fc": dense(d, 4 * d), "out": dense(4 * d, d)}
  return params


MODELS: dict[str, tuple[str, Callable[[jax.Array], Any]]] = {
    "mlp": ("MLP 784-300-100-10", lambda k: _dense(k, [784, 300, 100, 10])),
    "conv": ("Conv4-style ConvNet", _conv4),
    "wide": ("wide MLP 784-4000-1800-10",
             lambda k: _dense(k, [784, 4000, 1800, 10])),
    "resnet18": ("ResNet-18 (CIFAR)", lambda k: _resnet(
        k, [2, 2, 2, 2], [64, 128, 256, 512], False, (3, 64))),
    "resnet50": ("ResNet-50", lambda k: _resnet(
        k, [3, 4, 6, 3], [64, 128, 256, 512], True, (7, 64))),
    "gpt": ("GPT 6x256", _gpt),
}


def _time(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of ``fn`` (which must block) after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _nbytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, "dtype"))


def _stepper(tx, params, grads):
  """A compiled step whose state carries over from call to call, and the
  seconds its compilation took (trace, lower and compile)."""
  box = [tx.init(params)]
  start = time.perf_counter()
  update = jax.jit(tx.update).lower(grads, box[0], params).compile()
  compile_s = time.perf_counter() - start

  def step():
    updates, box[0] = update(grads, box[0], params)
    jax.block_until_ready(updates)
  return step, box, compile_s


def _search_used(method: str) -> str:
  """The cycle search that ``method`` runs on the default backend."""
  if method == "auto":
    return auto_cycle_search(jax.default_backend())
  return method


def _rows(params):
  return [_layout.to_rows(x, "neurons") for x in jax.tree.leaves(params)
          if x.ndim >= 1]


def sort_floors(params, repeats: int) -> tuple[float, float]:
  """Seconds of the int32 row sort and of the float row argsort."""
  int_bits = lambda x: lax.bitcast_convert_type(
      x, {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize])
  ints = jax.jit(lambda p: [jnp.sort(int_bits(x), axis=-1) for x in _rows(p)])
  floats = jax.jit(lambda p: [jnp.argsort(x, axis=-1) for x in _rows(p)])
  return (_time(lambda: jax.block_until_ready(ints(params)), repeats),
          _time(lambda: jax.block_until_ready(floats(params)), repeats))


def _model(name: str, seed: int):
  label, make = MODELS[name]
  params = make(jax.random.key(seed))
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed + 1),
                                                   p.shape), params)
  return label, params, grads


def bench_model(name: str, ratios: list[float], repeats: int,
                seed: int = 0, methods: tuple[str, ...] = ("auto",)
                ) -> list[dict[str, Any]]:
  """Times SGPerm (per partition ratio and cycle search), Adam and the
  floors; and the compile seconds of each update."""
  label, params, grads = _model(name, seed)
  adam_step, _, adam_compile = _stepper(optax.adam(1e-3), params, grads)
  adam = _time(adam_step, repeats)
  int_floor, float_floor = sort_floors(params, repeats)
  rows = []
  for ratio in ratios:
    for method in methods:
      # beta2 = 1 keeps the ratio fixed while timing.
      step, box, compile_s = _stepper(
          sgperm(lamda0=ratio, beta2=1.0, cycle_search=method), params, grads)
      seconds = _time(step, repeats)
      rows.append(dict(
          model=label, leaves=len(jax.tree.leaves(params)),
          params=sum(x.size for x in jax.tree.leaves(params)),
          partition_ratio=ratio, cycle_search=_search_used(method),
          compile_s=compile_s, sgperm_s=seconds, adam_s=adam,
          adam_compile_s=adam_compile, sort_floor_s=int_floor,
          argsort_floor_s=float_floor, sgperm_over_floor=seconds / int_floor,
          sgperm_over_adam=seconds / adam,
          state_over_params=_nbytes(box[0]) / _nbytes(params),
          platform=jax.default_backend()))
  return rows


def bench_laperm(name: str, repeats: int, seed: int = 0) -> dict[str, Any]:
  """Times ``laperm(adam)``: compile seconds, a step without and a step with
  a synchronisation, beside Adam."""
  label, params, grads = _model(name, seed)
  adam_step, _, adam_compile = _stepper(optax.adam(1e-3), params, grads)
  adam = _time(adam_step, repeats)
  free, _, compile_s = _stepper(laperm(optax.adam(1e-3), sync_period=10**6),
                                params, grads)
  synced, _, _ = _stepper(laperm(optax.adam(1e-3), sync_period=1), params,
                          grads)
  return dict(model=label, leaves=len(jax.tree.leaves(params)),
              params=sum(x.size for x in jax.tree.leaves(params)),
              compile_s=compile_s, step_s=_time(free, repeats),
              sync_step_s=_time(synced, repeats), adam_s=adam,
              adam_compile_s=adam_compile, platform=jax.default_backend())


def bench_scaling(total: int, lengths: list[int], ratio: float,
                  repeats: int, methods: tuple[str, ...] = ("auto",)
                  ) -> list[dict[str, Any]]:
  """SGPerm step and sort floor for rows of growing length, fixed total."""
  out = []
  for n in lengths:
    rows = max(1, total // n)
    params = {"w": jax.random.normal(jax.random.key(n), (n, rows))}
    grads = {"w": jax.random.normal(jax.random.key(n + 1), (n, rows))}
    floor = sort_floors(params, repeats)[0]
    for method in methods:
      step, _, _ = _stepper(sgperm(lamda0=ratio, beta2=1.0,
                                   cycle_search=method), params, grads)
      seconds = _time(step, repeats)
      out.append(dict(row_length=n, rows=rows, partition_ratio=ratio,
                      cycle_search=_search_used(method), sgperm_s=seconds,
                      sort_floor_s=floor, sgperm_over_floor=seconds / floor))
  return out


def _ms(x: float) -> str:
  return f"{x * 1e3:.1f}"


def format_tables(results: list[dict[str, Any]],
                  scaling: list[dict[str, Any]],
                  lapermed: list[dict[str, Any]] | None = None) -> str:
  """Markdown tables of :func:`bench_model`, :func:`bench_laperm` and
  :func:`bench_scaling` rows."""
  lines = [f"platform: {jax.default_backend()}"
           f" ({jax.devices()[0].device_kind})",
           "",
           "| model | leaves | params | ratio | search | compile s |"
           " SGPerm ms | Adam ms | int32 sort floor ms |"
           " float argsort floor ms | SGPerm/floor | SGPerm/Adam |"
           " state/params |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(
        f"| {r['model']} | {r['leaves']} | {r['params']:,} |"
        f" {r['partition_ratio']:g} | {r['cycle_search']} |"
        f" {r['compile_s']:.1f} | {_ms(r['sgperm_s'])} | {_ms(r['adam_s'])} |"
        f" {_ms(r['sort_floor_s'])} | {_ms(r['argsort_floor_s'])} |"
        f" {r['sgperm_over_floor']:.1f}x | {r['sgperm_over_adam']:.0f}x |"
        f" {r['state_over_params']:.2f} |")
  if lapermed:
    lines += ["", "| model | leaves | LaPerm compile s | Adam compile s |"
              " LaPerm step ms | with a sync ms | Adam ms |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in lapermed:
      lines.append(
          f"| {r['model']} | {r['leaves']} | {r['compile_s']:.1f} |"
          f" {r['adam_compile_s']:.1f} | {_ms(r['step_s'])} |"
          f" {_ms(r['sync_step_s'])} | {_ms(r['adam_s'])} |")
  if scaling:
    lines += ["", "| row length | rows | ratio | search | SGPerm ms |"
              " int32 sort floor ms | SGPerm/floor |",
              "|---:|---:|---:|---|---:|---:|---:|"]
    for r in scaling:
      lines.append(
          f"| {r['row_length']:,} | {r['rows']:,} | {r['partition_ratio']:g} |"
          f" {r['cycle_search']} | {_ms(r['sgperm_s'])} |"
          f" {_ms(r['sort_floor_s'])} |"
          f" {r['sgperm_over_floor']:.1f}x |")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  """The options of ``sgperm-jax bench``."""
  parser = argparse.ArgumentParser(
      prog="sgperm-jax bench",
      description="Time SGPerm and LaPerm steps, and their compilation,"
      " beside Adam and the sort floors.",
      formatter_class=cli.HelpFormatter)
  parser.add_argument("--models", default="mlp,conv,wide,resnet18,gpt",
                      help="comma-separated: " + ", ".join(MODELS))
  parser.add_argument("--ratios", default="0.1,1.0",
                      help="partition ratios (comma-separated)")
  parser.add_argument("--laperm", default="mlp,resnet18,gpt",
                      help="models to time laperm(adam) on (comma-separated;"
                      " empty: none)")
  parser.add_argument("--cycle-search", default="auto",
                      help="cycle searches to time, comma-separated: "
                      + ", ".join(CYCLE_SEARCHES) + " (auto: by platform)")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed calls per measurement (the median counts)")
  parser.add_argument("--scaling-total", type=int, default=1_000_000,
                      help="parameters in the scaling table (0: skip it)")
  parser.add_argument("--scaling-lengths", default="100,1000,10000,100000",
                      help="row lengths of the scaling table")
  parser.add_argument("--json", metavar="FILE", help="write the numbers here")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs ``sgperm-jax bench``; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    models = [m for m in args.models.split(",") if m]
    laperm_models = [m for m in args.laperm.split(",") if m]
    ratios = [float(x) for x in args.ratios.split(",") if x]
    lengths = [int(x) for x in args.scaling_lengths.split(",") if x]
  except ValueError as e:
    parser.error(str(e))
  methods = tuple(m for m in args.cycle_search.split(",") if m)
  unknown = [m for m in methods if m not in CYCLE_SEARCHES]
  if unknown or not methods:
    parser.error(f"--cycle-search: expected some of {CYCLE_SEARCHES},"
                 f" got {args.cycle_search!r}")
  if "native" in methods and not _native.available():
    parser.error("--cycle-search native: the native kernel is unavailable"
                 f" ({_native.load_error()})")
  bad = [m for m in models + laperm_models if m not in MODELS]
  if bad or any(not 0 <= r <= 1 for r in ratios) or args.repeats < 1:
    parser.error(f"unknown model(s) {bad}" if bad else
                 "ratios must lie in [0, 1] and --repeats must be >= 1")
  results = []
  for name in models:
    results += bench_model(name, ratios, args.repeats, methods=methods)
    print(f"... {name} done", file=sys.stderr, flush=True)
  lapermed = []
  for name in laperm_models:
    lapermed.append(bench_laperm(name, args.repeats))
    print(f"... laperm {name} done", file=sys.stderr, flush=True)
  scaling = (bench_scaling(args.scaling_total, lengths, 0.1, args.repeats,
                           methods) if args.scaling_total > 0 else [])
  print(format_tables(results, scaling, lapermed))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"platform": jax.default_backend(), "models": results,
                 "laperm": lapermed, "scaling": scaling}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
