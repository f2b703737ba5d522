"""Titans ablation on S-NIAH passkey retrieval, where the memory must carry the needle (issue 5).

The Shakespeare ablation (configs/titans_ablation.py) could not order the components: with a
64-character context every arm ended within seed noise. Here the `lmm` model of
configs/titans_niah.py must hold a 5-digit passkey across 100-250 filler characters, with the
2-layer memory in the setting that learns this task (forgetting-gate bias -8, inner learning-rate
cap 0.1; experiments/titans/README.md), for 500 steps. One component is removed per run: the
forgetting gate (weight decay), momentum, the q/k/v convolutions (lmm has no persistent tokens).
The paper's ordering of the damage (Table 5): weight decay > momentum > conv > persistent.

  memzoo-sweep configs/titans_niah_ablation.py --workdir runs/titans_niah_ablation
  python -m memzoo.experiments.length_eval runs/titans_niah_ablation --seq_lens 256 1024 4096
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

SEEDS = (0, 1, 2)


def get_config():
  config = load_file(str(Path(__file__).with_name("titans_niah.py")))
  config.model.mixers = ("lmm",)
  config.model.lmm.update(decay_bias=-8.0, max_lr=0.1)
  config.train.update(steps=500, warmup_steps=50, eval_every=250, checkpoint_every=250)
  return config


def get_sweep():
  arms = [{}, {"model.lmm.weight_decay": False}, {"model.lmm.momentum": False},
          {"model.lmm.conv": False}]
  return hyper.product(hyper.sweep("seed", SEEDS), arms)
