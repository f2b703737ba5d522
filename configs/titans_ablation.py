"""Titans ablation on character-level Shakespeare (issue 5 study; the paper's Table 5).

The default Shakespeare run (configs/shakespeare_char.py: 4 layers, d_model 128, context 64,
2000 steps) with MAG mixers whose attention sees 16 tokens and whose memory updates every 8, so
that context beyond the window reaches a token only through the memory. One component is removed
per run: the forgetting gate (weight decay), momentum, the q/k/v convolutions, the persistent
tokens. The paper's ordering of the damage: weight decay > momentum > conv > persistent.

  memzoo-sweep configs/titans_ablation.py --workdir runs/titans_ablation
  memzoo-report runs/titans_ablation --y val/loss
"""

from pathlib import Path

from memzoo.train.config import load_file

WINDOW = 16
MEMORY_CHUNK = 8


def get_config():
  config = load_file(str(Path(__file__).with_name("shakespeare_char.py")))
  config.model.mixers = ("mag",)
  config.model.mag.window = WINDOW
  config.model.mag.memory.chunk_size = MEMORY_CHUNK
  return config


def get_sweep():
  return [{}, {"model.mag.memory.weight_decay": False}, {"model.mag.memory.momentum": False},
          {"model.mag.memory.conv": False}, {"model.mag.num_persistent": 0}]
