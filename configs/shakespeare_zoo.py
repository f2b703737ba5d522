"""Every mixer of the zoo on the default Shakespeare config (issue 4 / 9 study).

The model, data and schedule are configs/shakespeare_char.py (nanoGPT's CPU baseline: 4 layers,
4 heads, d_model 128, context 64, batch 12, 2000 steps); only the mixer changes.

  memzoo-sweep configs/shakespeare_zoo.py --workdir runs/shakespeare_zoo
  memzoo-report runs/shakespeare_zoo --y val/loss --x model.mixers
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIXERS = ("attention", "retention", "linear_attention", "gla", "deltanet", "gated_deltanet",
          "lmm", "mac", "mag", "mal", "mom")


def get_config():
  return load_file(str(Path(__file__).with_name("shakespeare_char.py")))


def get_sweep():
  return hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)])
