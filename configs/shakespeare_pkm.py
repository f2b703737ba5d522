"""Shakespeare study (experiments/memory_layers/README.md (3)): a product-key memory in the middle
block vs the dense default of equal FLOPs.

The data, model and schedule are configs/shakespeare_char.py (nanoGPT's CPU baseline: 4 attention
blocks, d_model 128, context 64, batch 12, 2000 steps). Block 2's feed-forward is `memory_ffn`:
  * swiglu: the dense default itself (width 384): 6 * 128 * 384 = 294,912 forward FLOPs per token;
  * pkm: 256^2 = 65K slots (not 1M: at d_model 128 the sub-key scores of 1024 keys per half alone
    would cost more than the SwiGLU), 4 heads, top-32, k_dim 64, v_dim 128, sized to the same
    294,912 FLOPs: query 2*128*4*64 = 65,536 + sub-key scores 2*4*256*64 = 131,072 + read
    2*4*32*128 = 32,768 + gate and output 4*128*128 = 65,536 (the layers' own `flops`, compared
    by tests/test_memory_study_configs.py through memzoo/experiments/equal_flops.py).

  memzoo-train --config configs/shakespeare_pkm.py --workdir runs/shakespeare_pkm   # the pkm model
  experiments/run_study.sh memory_shakespeare       # both models, their report, copied here
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIDDLE = 2  # of blocks 0..3


def get_config():
  config = load_file(str(Path(__file__).with_name("shakespeare_char.py")))
  config.model.update(memory_layers=(MIDDLE,), memory_ffn="pkm")
  config.model.pkm.update(n_keys=256, heads=4, topk=32, k_dim=64, v_dim=128)
  return config


def get_sweep():
  return hyper.sweep("model.memory_ffn", ["swiglu", "pkm"])
