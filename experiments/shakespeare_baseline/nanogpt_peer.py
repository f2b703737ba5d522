"""nanoGPT's CPU Shakespeare run, re-implemented in torch as a same-machine peer for run.py.

nanoGPT (karpathy/nanoGPT) is not on PyPI, so this file rebuilds what its README's CPU command
trains (config/train_shakespeare_char.py with `--device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), written from its description, not copied:

* GPT-2 blocks: pre-LayerNorm without biases, causal self-attention through
  `F.scaled_dot_product_attention`, a GELU MLP of width 4 d, learned positions, tied embeddings;
  N(0, 0.02) init with the residual projections scaled by 1/sqrt(2 n_layer).
* AdamW (0.9, 0.99), weight decay 0.1 on matrices only, lr 1e-3 with 100 linear warmup steps then
  cosine to 1e-4 at step 2000, gradient clipping at 1.0; iterations 0..2000 (2001 updates).
* Char-level data: first 90% train / last 10% val, random windows; every 250 iterations the mean
  loss of 20 random batches of each split (nanoGPT's estimate_loss).

Needs torch only (an optional peer, never a memzoo dependency):

  /work/peers-venv/bin/python experiments/shakespeare_baseline/nanogpt_peer.py

prints one JSON line: {"wall_s": ..., "val": {"250": ..., ...}, "torch": ..., "threads": ...}.
"""

import gzip
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CORPUS = Path(__file__).resolve().parents[2] / "memzoo" / "data" / "tinyshakespeare.txt.gz"
LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12
STEPS, WARMUP, LR, MIN_LR, EVAL_EVERY, EVAL_BATCHES = 2000, 100, 1e-3, 1e-4, 250, 20


class LayerNorm(nn.Module):
  def __init__(self, width):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(width))

  def forward(self, x):
    return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class Block(nn.Module):
  def __init__(self):
    super().__init__()
    self.ln1, self.ln2 = LayerNorm(WIDTH), LayerNorm(WIDTH)
    self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
    self.attn_out = nn.Linear(WIDTH, WIDTH, bias=False)
    self.mlp_in = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
    self.mlp_out = nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x):
    b, t, _ = x.shape
    heads = lambda a: a.reshape(b, t, HEADS, WIDTH // HEADS).transpose(1, 2)
    q, k, v = map(heads, self.qkv(self.ln1(x)).split(WIDTH, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, WIDTH))
    return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x))))


class GPT(nn.Module):
  def __init__(self, vocab):
    super().__init__()
    self.tokens = nn.Embedding(vocab, WIDTH)
    self.positions = nn.Embedding(CONTEXT, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.ln_f = LayerNorm(WIDTH)
    for name, p in self.named_parameters():
      if p.dim() == 2:
        std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("attn_out.weight", "mlp_out.weight")) \
            else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, idx, targets):
    x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
    for block in self.blocks:
      x = block(x)
    logits = self.ln_f(x) @ self.tokens.weight.T  # tied output embedding
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(step):
  if step < WARMUP:
    return LR * (step + 1) / (WARMUP + 1)
  ratio = (step - WARMUP) / (STEPS - WARMUP)
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (LR - MIN_LR)


def main():
  torch.manual_seed(1337)
  text = gzip.decompress(CORPUS.read_bytes()).decode()
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  data = torch.tensor([index[c] for c in text], dtype=torch.long)
  split = int(0.9 * len(data))
  splits = {"train": data[:split], "val": data[split:]}

  def batch(name):
    source = splits[name]
    starts = torch.randint(len(source) - CONTEXT, (BATCH,))
    windows = torch.stack([source[s:s + CONTEXT + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]

  start = time.perf_counter()
  model = GPT(len(chars))
  matrices = [p for p in model.parameters() if p.dim() >= 2]
  others = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                                 {"params": others, "weight_decay": 0.0}], lr=LR,
                                betas=(0.9, 0.99))
  val, val_time = {}, {}
  for step in range(STEPS + 1):
    if step % EVAL_EVERY == 0:
      model.eval()
      with torch.no_grad():
        losses = {name: sum(model(*batch(name)).item() for _ in range(EVAL_BATCHES)) /
                  EVAL_BATCHES for name in ("train", "val")}
      model.train()
      val[step], val_time[step] = losses["val"], time.perf_counter() - start
    for group in optimizer.param_groups:
      group["lr"] = lr_at(step)
    loss = model(*batch("train"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
  print(json.dumps({"wall_s": time.perf_counter() - start, "val": val, "val_time_s": val_time,
                    "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
