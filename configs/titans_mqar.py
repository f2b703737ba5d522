"""Titans' memory on MQAR: memory depth x inner learning-rate cap (issue 5 study).

configs/mqar.py (2 layers, d_model 64, no MLP, 400 steps, every mixer behind a kernel-4 conv) with
the `lmm` mixer only. The sweep crosses the memory network's depth (1: a linear memory, the
delta rule with momentum and forgetting; 2: the paper's default 2-layer MLP) with `max_lr`, the cap
on the per-token inner learning rate theta_t (0.1: titans-pytorch's train_mac, memzoo's default
until this study; 1.0: the default since), at Zoology's two shortest (seq_len, pairs) cells.
Results: experiments/titans/README.md.

  memzoo-sweep configs/titans_mqar.py --workdir runs/titans_mqar
  memzoo-report runs/titans_mqar --y val/accuracy --x model.lmm.depth --group model.lmm.max_lr \\
      --facet data.seq_len,data.num_kv_pairs
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

DEPTHS = (1, 2)
MAX_LRS = (0.1, 1.0)
SEQ_LEN_AND_PAIRS = ((64, 4), (128, 8))


def get_config():
  config = load_file(str(Path(__file__).with_name("mqar.py")))
  config.model.mixers = ("lmm",)
  return config


def get_sweep():
  return hyper.product(
      hyper.sweep("model.lmm.depth", DEPTHS),
      hyper.sweep("model.lmm.max_lr", MAX_LRS),
      hyper.zipit(hyper.sweep("data.seq_len", [t for t, _ in SEQ_LEN_AND_PAIRS]),
                  hyper.sweep("data.num_kv_pairs", [n for _, n in SEQ_LEN_AND_PAIRS])))
