"""Multi-query associative recall (Zoology's MQAR) across the zoo's mixers.

Zoology's Figure 2 setup (Arora et al. 2023): 2 layers, no MLP (`ffn="identity"`), keys and values
from a large vocabulary, accuracy on the queried values; the sweep crosses every registered mixer
with d_model and (seq_len, num_kv_pairs). Sized for about an hour on a 2-core CPU (8 mixers x 9
runs, see experiments/mqar_state_size/README.md): vocabulary 512 instead of 8192, 400 steps of
2048 tokens (batch 32 at seq_len 64, 8 at 256), one learning rate (1e-2, no weight decay), where
Zoology trains 64 epochs. Every mixer runs behind a short causal conv (kernel 4): the DeltaNets,
MoM and the Titans memory have one by default; attention, retention, linear attention and GLA get
one here. Without it attention sits on MQAR's 0.25 plateau for ~1,500 steps and GLA learns nothing
in 600, so a CPU-sized budget would measure how soon a mixer starts learning, not what its state
can hold.

  memzoo-train --config configs/mqar.py --workdir runs/mqar_one             # one run (attention)
  memzoo-sweep configs/mqar.py --workdir runs/mqar --parallel 2             # the whole sweep
  memzoo-report runs/mqar --state_size --x state_size --y val/accuracy --group model.mixers \\
      --facet data.seq_len,data.num_kv_pairs --logx
"""

import ml_collections

from memzoo.experiments import hyper
from memzoo.train.config import base_config

# The mixers to compare; those not registered in this checkout are left out (with a note).
MIXERS = ("attention", "retention", "linear_attention", "gla", "deltanet", "gated_deltanet",
          "lmm", "mom")
D_MODELS = (32, 64, 128)
SEQ_LEN_AND_PAIRS = ((64, 4), (128, 8), (256, 16))  # Zoology Figure 2's first three
TOKENS_PER_BATCH = 2048


def get_config():
  config = base_config()
  config.data = ml_collections.ConfigDict(dict(
      task="mqar", vocab_size=512, seq_len=64, num_kv_pairs=4, random_non_queries=True,
      num_train_examples=100_000, num_val_examples=3_000, seed=0))

  config.model.update(mixers=("attention",), num_layers=2, num_heads=2, d_model=64,
                      ffn="identity")

  for mixer in ("attention", "retention", "linear_attention", "gla"):
    config.model[mixer].conv_size = 4

  config.train.update(steps=400, lr=1e-2, min_lr=1e-4, warmup_steps=50, weight_decay=0.0,
                      log_every=50, eval_every=200, eval_steps=8, checkpoint_every=200)
  config.train.batch_size = TOKENS_PER_BATCH // config.data.get_ref("seq_len")
  return config


def get_sweep():
  return hyper.product(
      hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)]),
      hyper.sweep("model.d_model", D_MODELS),
      hyper.zipit(hyper.sweep("data.seq_len", [t for t, _ in SEQ_LEN_AND_PAIRS]),
                  hyper.sweep("data.num_kv_pairs", [n for _, n in SEQ_LEN_AND_PAIRS])))
