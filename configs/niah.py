"""Passkey retrieval in a haystack of Shakespeare (RULER's single-needle NIAH, passkey variant).

A character-level model reads `seq_len` characters of tiny-Shakespeare filler with the needle
"The pass key is 12345. Remember it. 12345 is the pass key." at a random depth, then "What is the
pass key? The pass key is" and must continue with the 5 digits (only they are scored). The sweep
crosses the zoo's mixers with the context length; set `data.depth` to train and evaluate at one
needle depth instead of a random one.

  memzoo-train --config configs/niah.py --workdir runs/niah_one
  memzoo-train --config configs/niah.py --config.data.depth=0.9 --config.data.seq_len=512
  memzoo-sweep configs/niah.py --workdir runs/niah --parallel 2
  memzoo-report runs/niah --x data.seq_len --y val/accuracy --group model.mixers --logx
"""

import ml_collections
from ml_collections import config_dict

from memzoo.experiments import hyper
from memzoo.train.config import base_config

# The mixers to compare; those not registered in this checkout are left out (with a note).
MIXERS = ("attention", "retention", "linear_attention", "gla", "deltanet", "gated_deltanet",
          "lmm", "mom")
SEQ_LENS = (128, 256, 512)
TOKENS_PER_BATCH = 4096


def get_config():
  config = base_config()
  config.data = ml_collections.ConfigDict(dict(
      task="niah", seq_len=256, depth=config_dict.placeholder(float), key_digits=5,
      path=config_dict.placeholder(str), val_fraction=0.1, num_train_examples=100_000,
      num_val_examples=1_000, seed=0))

  config.model.update(mixers=("attention",), num_layers=2, num_heads=4, d_model=128)

  config.train.update(steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, log_every=50,
                      eval_every=250, eval_steps=8, checkpoint_every=500)
  config.train.batch_size = TOKENS_PER_BATCH // config.data.get_ref("seq_len")
  return config


def get_sweep():
  return hyper.product(
      hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)]),
      hyper.sweep("data.seq_len", SEQ_LENS))
