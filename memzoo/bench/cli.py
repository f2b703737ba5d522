"""`memzoo-bench` (or `python -m memzoo.bench`): memzoo's micro-benchmarks and their report.

  memzoo-bench                        # every suite, full sizes (run on a quiet machine)
  memzoo-bench --quick                # smoke run of every suite at tiny sizes (timings meaningless)
  memzoo-bench --suites mixers --mixers retention,gla --lengths 1024,16384

Suites:
  peak    measure the matmul peak in each dtype used and refresh the MFU cache (memzoo/train/mfu.py)
  mixers  per mixer: fwd+bwd time per token vs T
  decode  per mixer: decode step time vs context length, and how often the step compiled
  train   train-step MFU of the d_model 512, 8-layer attention model at context 1024 (and variants)

Writes `<out>/results.md`, `<out>/results.json` and plots (default out: experiments/bench).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import memzoo.models.layers  # noqa: F401  (registers the built-in layers)
from memzoo.bench import mixers as mixer_bench
from memzoo.bench import report, timing
from memzoo.bench import train_step as train_bench
from memzoo.models.layers import registry
from memzoo.train import distributed, huge_pages, mfu

SUITES = ("peak", "mixers", "decode", "train")
QUICK = dict(lengths=[32, 64], contexts=[16, 32], d_model=32, num_heads=2, repeats=1,
             min_seconds=0.0, decode_steps=2, train_batch=1, train_seq_len=32, train_steps=1,
             variants=["default"])
QUICK_TRAIN_MODEL = dict(d_model=32, num_layers=1, num_heads=2)


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="memzoo-bench", description=__doc__.splitlines()[0])
  csv = lambda s: [v for v in s.split(",") if v]
  ints = lambda s: [int(v) for v in csv(s)]
  p.add_argument("--suites", type=csv, default=list(SUITES), help=f"from {SUITES}")
  p.add_argument("--mixers", type=csv, default=None, help="default: every registered mixer")
  p.add_argument("--lengths", type=ints, default="512,1024,2048,4096,8192,16384")
  p.add_argument("--contexts", type=ints, default="1024,2048,4096,8192,16384")
  p.add_argument("--batch", type=int, default=1, help="batch of the mixer and decode suites")
  p.add_argument("--d_model", type=int, default=384)
  p.add_argument("--num_heads", type=int, default=6)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
  p.add_argument("--min_seconds", type=float, default=1.0,
                 help="mixer suite: time each cell at least this long (more calls when short)")
  p.add_argument("--max_seconds", type=float, default=60.0,
                 help="a mixer slower than this per call is not run at longer T")
  p.add_argument("--decode_steps", type=int, default=64)
  p.add_argument("--variants", type=csv, default="default,scan_layers,remat=dots_saveable,"
                 "attention=naive,bfloat16", help=f"from {list(train_bench.VARIANTS)}")
  p.add_argument("--train_batch", type=int, default=4)
  p.add_argument("--train_seq_len", type=int, default=1024)
  p.add_argument("--train_steps", type=int, default=5)
  p.add_argument("--out", type=Path, default=Path("experiments/bench"))
  p.add_argument("--quick", action="store_true",
                 help="smoke run: tiny sizes, one repeat, a 1-layer d_model 32 train model "
                 "(checks the pipeline; its timings mean nothing)")
  if p.parse_known_args(argv)[0].quick:
    p.set_defaults(**QUICK)  # flags given explicitly still win
  args = p.parse_args(argv)
  for name, allowed in (("suites", SUITES), ("variants", train_bench.VARIANTS)):
    unknown = sorted(set(getattr(args, name)) - set(allowed))
    if unknown:
      p.error(f"--{name}: unknown {unknown}; choose from {list(allowed)}")
  known = sorted(registry.REGISTRIES["mixer"])
  args.mixers = args.mixers or known
  if set(args.mixers) - set(known):
    p.error(f"--mixers: unknown {sorted(set(args.mixers) - set(known))}; choose from {known}")
  args.dtype = jnp.dtype(args.dtype)
  return args


def is_recurrent(name: str, a) -> bool:
  """True when the mixer's decode state does not grow with `max_len` (all but attention)."""
  build = lambda: mixer_bench.build_mixer(name, {}, d_model=a.d_model, num_heads=a.num_heads,
                                         dtype=a.dtype)
  shapes = lambda n: [x.shape for x in jax.tree.leaves(  # abstract: nothing is computed
      jax.eval_shape(lambda: build().init_state(1, n)))]
  return shapes(16) == shapes(32)


def run_mixers(a, log) -> dict:
  us, gflops = {}, {}
  setup = f"B={a.batch}, d_model {a.d_model}, {a.num_heads} heads, {a.dtype.name}"
  for name in a.mixers:
    bench = mixer_bench.FwdBwdBench(name, {}, d_model=a.d_model, num_heads=a.num_heads,
                                    dtype=a.dtype)
    us[name], gflops[name], stop = {}, {}, None
    for length in a.lengths:
      if stop:
        us[name][length] = stop
        continue
      try:
        t, flops = bench.time(a.batch, length, repeats=a.repeats, min_seconds=a.min_seconds)
      except Exception as e:  # noqa: BLE001  (out of memory: report it, go on with the others)
        us[name][length] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:60]}"
        stop = "skipped (failed at a shorter T)"
        continue
      us[name][length] = 1e6 * t.wall / (a.batch * length)
      gflops[name][length] = flops / t.wall / 1e9
      log(f"fwd+bwd {name:18s} T={length:6d} {us[name][length]:10.3f} us/token "
          f"(cpu {1e6 * t.cpu / (a.batch * length):10.3f})  {gflops[name][length]:7.2f} GFLOP/s")
      if t.wall > a.max_seconds:
        stop = f"skipped (> {a.max_seconds:g} s at a shorter T)"
  return {"setup": setup, "lengths": a.lengths, "repeats": a.repeats,
          "min_seconds": a.min_seconds, "us_per_token": us,
          "gflops": gflops, "recurrent": [n for n in a.mixers if is_recurrent(n, a)]}


def run_decode(a, log) -> dict:
  us, compiles = {}, {}
  for name in a.mixers:
    bench = mixer_bench.DecodeBench(name, {}, batch=a.batch, steps=a.decode_steps,
                                    d_model=a.d_model, num_heads=a.num_heads, dtype=a.dtype)
    us[name] = {}
    for context, t in bench.time(a.contexts, repeats=a.repeats).items():
      us[name][context] = 1e6 * t.wall
      log(f"decode  {name:18s} context={context:6d} {1e6 * t.wall:10.2f} us/step "
          f"(cpu {1e6 * t.cpu:10.2f})")
    compiles[name] = bench.compiles
  return {"setup": f"B={a.batch}, d_model {a.d_model}, {a.num_heads} heads, {a.dtype.name}",
          "contexts": a.contexts, "steps": a.decode_steps, "repeats": a.repeats,
          "us_per_step": us, "compiles": compiles,
          "recurrent": [n for n in a.mixers if is_recurrent(n, a)]}


def main(argv=None) -> None:
  huge_pages.exec_with_huge_pages()
  a = parse(argv)
  distributed.apply_cpu_flags()  # what memzoo-train runs with
  log = lambda line: print(line, flush=True)
  header = ["# memzoo-bench results", "", f"Machine: {timing.machine()}.", "",
            f"Command: `memzoo-bench {' '.join(sys.argv[1:] if argv is None else argv)}`."]
  log(header[2])
  if "peak" in a.suites:
    dtypes = {a.dtype.name} | {train_bench.model_config(train_bench.VARIANTS[v]).model.dtype
                               for v in a.variants if "train" in a.suites}
    for dtype in sorted(dtypes):
      # A quick run (a busy machine, often) must not replace the peak that MFU logs divide by.
      peak, source = mfu.device_peak(dtype, remeasure=not a.quick)
      header += ["", f"Peak of one device, {dtype}: {peak / 1e9:.2f} GFLOP/s ({source})."]
      log(header[-1])
  results = {}
  if "mixers" in a.suites:
    results["mixers"] = run_mixers(a, log)
  if "decode" in a.suites:
    results["decode"] = run_decode(a, log)
  if "train" in a.suites:
    model = QUICK_TRAIN_MODEL if a.quick else None
    results["train"] = train_bench.run(a.variants, batch=a.train_batch, seq_len=a.train_seq_len,
                                       steps=a.train_steps, model=model, log=log)
  log(f"wrote {report.write(a.out, header, results)}")


if __name__ == "__main__":
  main()
