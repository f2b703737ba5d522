"""Character-level tiny Shakespeare: nanoGPT's CPU baseline, on memzoo's attention LM.

nanoGPT (config/train_shakespeare_char.py with its README's CPU overrides): 4 layers, 4 heads,
d_model 128, context 64, batch 12, 2000 steps, lr 1e-3 cosine-decayed to 1e-4 after 100 warmup
steps, AdamW (0.9, 0.99), weight decay 0.1, clip 1.0, no dropout -> val loss ~1.88.

  memzoo-train --config configs/shakespeare_char.py --workdir runs/shakespeare_char
"""

from memzoo.train.config import base_config


def get_config():
  config = base_config()
  config.data.task = "text"  # path None: the tiny Shakespeare shipped in the package
  config.data.tokenizer = "char"
  config.data.seq_len = 64

  config.model.mixers = ("attention",)
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128

  config.train.steps = 2000
  config.train.batch_size = 12
  config.train.lr = 1e-3
  config.train.min_lr = 1e-4
  config.train.warmup_steps = 100
  config.train.eval_every = 250
  config.train.eval_steps = 20
  return config
