"""What the neural memory of a trained run does inside one sequence: gates, weights, step sizes.

For every write into a Titans memory (`lmm` mixers, and the memory branch of MAG / MAL / MAC) of
each run, on `--examples` validation sequences of the run's task at `--seq_len` (a memory with
persistent tokens writes twice per layer: those tokens, then the sequence):

  theta, eta, alpha   the mean inner learning rate, momentum and forgetting gates;
  kept                prod_t (1 - alpha_t) over the sequence: the share of the starting weights
                      (and of an early write) that forgetting leaves at the end, mean over heads
                      and for the head that keeps most;
  |W| start / end     Frobenius norm per head of each memory layer's weights, before the sequence
                      and after it (the learned initial weights, then the written ones);
  step / |W|          |sum_t theta_t g_t| / |W| per layer over the first chunk: how much of the
                      memory one chunk's mini-batch step rewrites (g_t: token t's soft-clipped
                      gradient at the chunk-start weights, as the op takes it);
  |read|, |v|         root-mean-square norm per head-token of the memory's reads M_t(q_t) and of
                      its target values v_t.

    python experiments/titans/memory_dynamics.py runs/titans_niah_2000/mixers=lmm [more runs]
    python experiments/titans/memory_dynamics.py RUN --init  # its config, freshly initialised

Reads the latest checkpoint of each run and prints that table, then one of the run's training:
the last val loss and accuracy, and the outer gradient norm (before clipping) logged over the steps.
"""

import argparse
import contextlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from memzoo.data import pipeline, tasks
from memzoo.experiments.report import read_metrics
from memzoo.models.backbone import LanguageModel
from memzoo.models.layers import neural_memory
from memzoo.models.ops import memory_mlp
from memzoo.train import config as config_lib
from memzoo.train.sample import load_run

COLUMNS = ("run", "write", "tokens", "theta", "eta", "alpha", "kept (mean / best head)",
           "|W| start", "|W| end", "step / |W|", "|read|", "|v|")


def _rms(x, axis=-1):
  """Root-mean-square over all but `axis` of the norm along `axis`."""
  return float(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis))))


def _per_head_norms(weights):
  """Mean Frobenius norm per (batch, head) of each layer's `[B, H, I, O]` weights."""
  return [float(jnp.mean(jnp.linalg.norm(w, axis=(-2, -1)))) for w in weights]


def first_chunk_step(memory, feats, gates, weights):
  """`|sum_t theta_t g_t| / |W|` per memory layer over the first chunk (tokens `[0, C)`), with
  the op's own per-token gradient factors and soft clip (ops/memory_mlp.py)."""
  c = memory.chunk_size
  keys = jnp.swapaxes(feats["k"][:, :c], 1, 2).astype(jnp.float32)  # [B, H, C, Dk]
  values = jnp.swapaxes(feats["v"][:, :c], 1, 2).astype(jnp.float32)
  rule = memory.rule
  inputs, deltas = memory_mlp.sample_gradients(weights, keys, values, rule["activation"],
                                               rule["residual"])
  scale = jnp.swapaxes(gates["lr"][:, :c], 1, 2)  # [B, H, C]
  if rule["grad_clip"] is not None:
    norms = memory_mlp.gradient_norms(inputs, deltas)
    scale = scale * memory_mlp.soft_clip_factors(norms, rule["grad_clip"])
  steps = [jnp.einsum("bhn,bhni,bhno->bhio", scale, a, d) for a, d in zip(inputs, deltas)]
  return [float(jnp.mean(jnp.linalg.norm(s, axis=(-2, -1)) / jnp.linalg.norm(w, axis=(-2, -1))))
          for s, w in zip(steps, weights)]


@contextlib.contextmanager
def recording(rows: list):
  """Records a row of statistics at every `NeuralMemory.write` while active."""
  write = neural_memory.NeuralMemory.write

  def recorded(self, feats, x, state, **kwargs):
    reads, new_state = write(self, feats, x, state, **kwargs)
    gates = self.gates(x)
    kept = jnp.exp(jnp.sum(jnp.log1p(-gates["decay"]), axis=1))  # [B, H]
    rows.append(dict(
        tokens=x.shape[1], theta=float(gates["lr"].mean()), eta=float(gates["momentum"].mean()),
        alpha=float(gates["decay"].mean()), kept=float(kept.mean()),
        kept_best=float(kept.max(axis=-1).mean()),
        start=_per_head_norms(state.weights), end=_per_head_norms(new_state.weights),
        step=first_chunk_step(self, feats, gates, state.weights),
        read=_rms(reads), v=_rms(feats["v"])))
    return reads, new_state

  neural_memory.NeuralMemory.write = recorded
  try:
    yield
  finally:
    neural_memory.NeuralMemory.write = write


def run_rows(run: str, *, init: bool, seq_len: int | None, examples: int) -> list[dict]:
  config, _, model = load_run(run)
  if init:
    model = LanguageModel(config.model, rngs=nnx.Rngs(config.seed))
  if seq_len:
    config.data.seq_len = seq_len
  task = tasks.build_task(config_lib.data_options(config))
  batch = next(iter(pipeline.eval_dataset(task, "val", global_batch=examples, num_batches=1,
                                          seed=config.seed + 1)))
  rows = []
  with recording(rows):
    model.logits_and_aux_loss(jnp.asarray(batch["inputs"]))
  return rows


def training_row(run: str) -> str:
  """`| run | val loss | val acc | grad norm median / max |` from the run's metrics.jsonl."""
  records = read_metrics(Path(run) / "metrics.jsonl")
  val = [r for r in records if r["split"] == "val"][-1]
  norms = np.array([r["grad_norm"] for r in records if r["split"] == "train"])
  return (f"| {val['step']} | {val['loss']:.3f} | {val['accuracy']:.3f} | "
          f"{np.median(norms):.3g} / {norms.max():.3g} |")


def _fmt(values):
  return " / ".join(f"{v:.3g}" for v in values)


def _label(run: str) -> str:
  return "/".join(Path(run).parts[-2:])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="run directories (with checkpoints)")
  parser.add_argument("--init", action="store_true", help="fresh weights from each run's config")
  parser.add_argument("--seq_len", type=int, default=None, help="default: the run's")
  parser.add_argument("--examples", type=int, default=8)
  args = parser.parse_args(argv)
  print("| " + " | ".join(COLUMNS) + " |")
  print("|" + "---|" * len(COLUMNS))
  for run in args.runs:
    label = _label(run) + (" (init)" if args.init else "")
    for i, r in enumerate(run_rows(run, init=args.init, seq_len=args.seq_len,
                                   examples=args.examples)):
      print(f"| {label} | {i} | {r['tokens']} | {r['theta']:.3f} | {r['eta']:.3f} | "
            f"{r['alpha']:.4f} | {r['kept']:.2g} / {r['kept_best']:.2g} | {_fmt(r['start'])} | "
            f"{_fmt(r['end'])} | {_fmt(r['step'])} | {r['read']:.3g} | {r['v']:.3g} |")
  if not args.init:
    print("\n| run | step | val loss | val accuracy | outer grad norm median / max |")
    print("|---|---|---|---|---|")
    for run in args.runs:
      print(f"| {_label(run)} " + training_row(run))


if __name__ == "__main__":
  main()
