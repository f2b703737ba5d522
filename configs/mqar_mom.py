"""MQAR: Mixture-of-Memories against Gated DeltaNet and attention at equal d_model (issue 6 study).

configs/mqar.py (2 layers, 2 heads, no MLP, vocabulary 512, 4096 tokens a batch) at one easier
setting than its hardest cell, so that attention leaves chance within the budget: 16 key-value
pairs in 128 tokens, batches of 16 sequences (2048 tokens). With 64 pairs attention sits at chance
until ~1100 steps at lr 3e-3. 1000 steps (2M tokens) are meant as about ten minutes per run on 2
CPU cores; that estimate comes from a 20-step smoke run on a loaded machine, so read the first
run's `tokens_per_s` in metrics.jsonl and scale `--config.train.steps` if it is far off.

  memzoo-sweep configs/mqar_mom.py --workdir runs/mqar_mom --parallel 2
  memzoo-report runs/mqar_mom --state_size --x state_size --y val/accuracy --group model.mixers
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIXERS = ("attention", "gated_deltanet", "mom")


def get_config():
  config = load_file(str(Path(__file__).with_name("mqar.py")))
  config.data.update(seq_len=128, num_kv_pairs=16)
  config.model.d_model = 64
  config.train.update(steps=1000, batch_size=16, warmup_steps=100, log_every=50,
                      eval_every=250, checkpoint_every=500)
  return config


def get_sweep():
  return hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)])
