"""Titans on S-NIAH passkey retrieval: train at 256 characters, read at 256-4096 (issue 5 study).

configs/niah.py (2 layers, 4 heads, d_model 128, random needle depth) with each mixer of the
comparison trained at `seq_len` 256. The hybrids get an attention span well below the training
length (MAG / MAL: a 64-token sliding window; MAC: 64-token segments), so the passkey must travel
through the neural memory once the needle is more than 64 characters back.

  memzoo-sweep configs/titans_niah.py --workdir runs/titans_niah
  python -m memzoo.experiments.length_eval runs/titans_niah --seq_lens 256 1024 2048 4096
"""

from pathlib import Path

from memzoo.experiments import hyper
from memzoo.train.config import load_file

MIXERS = ("attention", "gated_deltanet", "lmm", "mac", "mag", "mal")
SPAN = 64  # attention window of MAG / MAL, segment length of MAC
MEMORY_CHUNK = 16


def get_config():
  config = load_file(str(Path(__file__).with_name("niah.py")))
  config.data.seq_len = 256
  config.train.batch_size = 16
  config.model.lmm.chunk_size = MEMORY_CHUNK
  for hybrid in ("mag", "mal"):
    config.model[hybrid].window = SPAN
    config.model[hybrid].memory.chunk_size = MEMORY_CHUNK
  config.model.mac.segment_len = SPAN
  config.model.mac.memory.chunk_size = MEMORY_CHUNK
  return config


def get_sweep():
  return hyper.sweep("model.mixers", [(m,) for m in hyper.available_mixers(MIXERS)])
