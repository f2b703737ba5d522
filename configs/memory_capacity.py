"""Capacity study (experiments/memory_layers/README.md (2)): recall of N memorised facts by a dense
feed-forward vs a product-key memory (pkm) vs PEER of equal FLOPs per token.

Task `facts` (memzoo/data/synthetic/facts.py): N distinct 2-token keys over a 256-token key
vocabulary, each with a 2-token value over a 256-token value vocabulary (16 bits per fact); 8 facts
per 48-token sequence; the val split is the whole fact set, once; val/accuracy is recall per value
token (teacher-forced on the key).

Model: 3 attention blocks, d_model 32, 2 heads; only the middle block has a feed-forward
(`ffn="identity"` elsewhere, as Zoology's recall models), so the three models differ in that one
layer, `model.memory_ffn` at `memory_layers=(1,)` (forward FLOPs per token from the layers' own
`flops`, memzoo/experiments/equal_flops.py):
  * pkm: 128^2 = 16K slots (a modest table for a CPU budget; study (1) sizes 1M), 2 heads,
    top-8, k_dim 32, v_dim 32: 25,600 FLOPs; the model has 566K parameters;
  * peer: the same router, top-20 experts per head: 25,600 FLOPs; 1.09M parameters;
  * swiglu (dense): width `swiglu_width(pkm FLOPs, multiple=1)` = 133: 25,536 FLOPs; the model
    has 41.8K parameters, so ~2 bits per parameter (Allen-Zhu and Li, "Physics of Language Models
    3.3") is ~5.2K facts of 16 bits. N = 2^10, 2^12, 2^14 is 0.2x, 0.8x and 3x that.
Weight decay is off: it would trade memorised facts against parameter norm.

Budget: the 9 runs, 2 at a time on this 2-core CPU, in ~30 minutes. Measured with
`--config.train.steps=60`, one run at a time while other jobs loaded the machine (load ~3), on
steps 40-60: dense 39K, pkm 14K, peer 12.4K tokens/s, i.e. 0.079, 0.217 and 0.248 s per step of
64 x 48 tokens, 0.54 s for the three models at one N, 1.63 s over all nine runs; start, compile
and checkpoints took ~50 s per run with 2 running at once (`run_study.sh memory_capacity --smoke`). 1500
steps: 2,450 run-seconds + 9 x 50 s + 3 evals of the fact set per run (6N tokens forward each,
~20 s in all, estimated) = ~2,900 run-seconds over 2 slots: ~24 minutes, ~28 with the uneven
tail (the slowest runs go first). Each fact is seen 1500 * 64 * 8 / N times: 750, 188 and 47:
the largest set is far from memorised even by a model that could hold it; raise `train.steps`
where compute allows.

  memzoo-sweep configs/memory_capacity.py --workdir runs/memory_capacity --parallel 2
  experiments/run_study.sh memory_capacity          # the sweep, its report, copied here
"""

import ml_collections

from memzoo.data.synthetic.facts import FACT_LEN
from memzoo.experiments import equal_flops, hyper
from memzoo.train.config import base_config

MODELS = ("peer", "pkm", "swiglu")  # the middle block's feed-forward; slowest first
NUM_FACTS = (2 ** 10, 2 ** 12, 2 ** 14)
SEQ_LEN = 48
BATCH = 64
STEPS = 1500
EVALS = 3


def get_config():
  config = base_config()
  config.data = ml_collections.ConfigDict(dict(
      task="facts", num_facts=NUM_FACTS[0], key_vocab=256, value_vocab=256, seq_len=SEQ_LEN,
      seed=0, num_train_examples=100_000))

  config.model.update(mixers=("attention",), num_layers=3, num_heads=2, d_model=32,
                      ffn="identity", memory_layers=(1,), memory_ffn="pkm")
  config.model.pkm.update(n_keys=128, heads=2, topk=8, k_dim=32)
  config.model.peer.update(n_keys=128, heads=2, topk=20, k_dim=32)
  config.model.mlp_dim = equal_flops.swiglu_width(
      equal_flops.ffn_flops_per_token(config.model, "pkm"), config.model.d_model, multiple=1)

  config.train.update(steps=STEPS, batch_size=BATCH, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                      weight_decay=0.0, log_every=50, eval_every=STEPS // EVALS,
                      checkpoint_every=STEPS // EVALS)
  # The val split is the fact set once (ceil(N / facts per sequence) examples), padded with
  # fact-less examples to whole batches; eval_steps reads all of it.
  batch, facts = config.train.get_ref("batch_size"), config.data.get_ref("num_facts")
  config.data.num_val_examples = -(-facts // (SEQ_LEN // FACT_LEN * batch)) * batch
  config.train.eval_steps = config.data.get_ref("num_val_examples") // batch
  return config


def get_sweep():
  return hyper.product(hyper.sweep("model.memory_ffn", MODELS),
                       hyper.sweep("data.num_facts", NUM_FACTS))
