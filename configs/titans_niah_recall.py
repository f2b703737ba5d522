"""Titans on S-NIAH with the 2-layer memory in the setting that learns it (issue 5 study).

configs/titans_niah.py (train at 256 characters, MAG / MAL window and MAC segment 64) with every
neural memory's forgetting-gate bias at -8 and its inner learning-rate cap at 0.1, the setting in
which the paper's 2-layer memory holds the passkey (experiments/titans/README.md, "Why the
2-layer memory did not learn it"), for 1000 steps. One run per Titans variant, and MAG without its
16 persistent tokens: the component the paper's ablation (Table 5) ranks last.

  memzoo-sweep configs/titans_niah_recall.py --workdir runs/titans_niah_recall
  python -m memzoo.experiments.length_eval runs/titans_niah_recall --seq_lens 256 1024 2048 4096
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIXERS = ("lmm", "mac", "mag", "mal")


def get_config():
  config = load_file(str(Path(__file__).with_name("titans_niah.py")))
  for memory in (config.model.lmm, config.model.mac.memory, config.model.mag.memory,
                 config.model.mal.memory):
    memory.update(decay_bias=-8.0, max_lr=0.1)
  config.train.update(steps=1000, warmup_steps=50)
  return config


def get_sweep():
  variants = hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)])
  no_persistent = {"model.mixers": ("mag",), "model.mag.num_persistent": 0}
  return variants + [no_persistent]
