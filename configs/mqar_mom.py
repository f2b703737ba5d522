"""MQAR: Mixture-of-Memories against Gated DeltaNet and attention at equal d_model (issue 6 study).

configs/mqar.py (Zoology's MQAR: 2 layers, 2 heads, no MLP, vocabulary 512) at its first cell, 4
key-value pairs in 64 tokens, d_model 64, with the schedule that got attention through MQAR's
phase transition in a probe on this 2-core CPU: batches of 32, lr 1e-2 without weight decay, 3000
steps (~6M tokens). There attention sat at the 0.25 plateau (guessing among the context's values)
until step ~1400 and reached 0.82 val accuracy at step 3000 (~5 min). Attention stays plain here,
as it ran (configs/mqar.py now puts a short conv in front of it).

  memzoo-sweep configs/mqar_mom.py --workdir runs/mqar_mom --parallel 2
  memzoo-report runs/mqar_mom --state_size --x state_size --y val/accuracy --group model.mixers
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIXERS = ("attention", "gated_deltanet", "mom")


def get_config():
  config = load_file(str(Path(__file__).with_name("mqar.py")))
  config.data.update(seq_len=64, num_kv_pairs=4)
  config.model.d_model = 64
  config.model.attention.conv_size = None  # plain attention, as this study ran (mqar.py adds one)
  config.train.update(steps=3000, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_steps=100,
                      log_every=250, eval_every=250, checkpoint_every=1000)
  return config


def get_sweep():
  return hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)])
