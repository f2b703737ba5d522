"""Multi-head n-gram hashing for Engram (DeepSeek 2026, "Conditional Memory via Scalable Lookup").

Head h of order n mixes the n-gram ending at token t, `(x_{t-n+1}, ..., x_t)`, into a 32-bit word
by a multiplicative XOR hash, `w_h = XOR_j (x_{t-j} * m_{h,j}) mod 2^32` with odd multipliers `m`,
and reads row `w_h mod p_h` of its own table, `p_h` a distinct prime. Each head has its own
multipliers, so heads hash independently: two n-grams share their rows in every head with
probability about `prod_h 1/p_h` (one word shared by all heads would cap that at 2^-32).
Everything here is a pure function of integers: the rows of a token sequence never depend on the
device, the dtype or the library version.
"""

import math

import jax.numpy as jnp
import numpy as np

from memzoo.models.ops.segments import segment_positions

PAD_TOKEN = -1  # stands for "no token" (before the start of a document); hashes as 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
  """SplitMix64 (Steele et al. 2014): a fixed bijective mixer, so multipliers never change."""
  z = (x + 0x9E3779B97F4A7C15) & _MASK64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def hash_multipliers(order: int, heads: int, *seeds: int) -> np.ndarray:
  """`[heads, order]` odd uint32 multipliers for n-grams of length `order`, a fixed function of
  `(order, heads)` and the non-negative `seeds` (e.g. a config seed and the layer index)."""
  state = _splitmix64(order)
  for seed in seeds:
    state = _splitmix64(state ^ seed)
  words = [_splitmix64(state + i) & 0xFFFFFFFF for i in range(heads * order)]
  return np.array(words, np.uint32).reshape(heads, order) | np.uint32(1)


def is_prime(n: int) -> bool:
  if n < 2:
    return False
  if n % 2 == 0 or n % 3 == 0:
    return n in (2, 3)
  return all(n % f and n % (f + 2) for f in range(5, math.isqrt(n) + 1, 6))


def primes_from(start: int, count: int) -> np.ndarray:
  """The `count` smallest primes `>= start`, ascending, as int64."""
  primes, n = [], max(start, 2)
  while len(primes) < count:
    if is_prime(n):
      primes.append(n)
    n += 1
  return np.array(primes, np.int64)


def token_windows(tokens: jnp.ndarray, width: int, *, history: jnp.ndarray | None = None,
                  segment_ids: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The last `width` tokens at every position.

  Args:
    tokens: `[B, T]` int.
    width: window length N (the longest n-gram).
    history: `[B, N-1]` tokens that precede `tokens`, oldest first (PAD_TOKEN if None).
    segment_ids: `[B, T]`; tokens of an earlier document are replaced by PAD_TOKEN.

  Returns:
    `(windows [B, T, N] int32, history [B, N-1])`: `windows[..., j]` is the token j steps back
    (j = 0 is the current one); the returned history is the input for the next block.
  """
  b, t = tokens.shape
  tokens = tokens.astype(jnp.int32)
  if history is None:
    history = jnp.full((b, width - 1), PAD_TOKEN, jnp.int32)
  padded = jnp.concatenate([history.astype(jnp.int32), tokens], axis=1)  # [B, N-1+T]
  windows = jnp.stack([padded[:, width - 1 - j:width - 1 - j + t] for j in range(width)], axis=-1)
  if segment_ids is not None:
    in_document = segment_positions(segment_ids, b, t)[..., None] >= jnp.arange(width)
    windows = jnp.where(in_document, windows, PAD_TOKEN)
  return windows, padded[:, t:]


def ngram_hash(windows: jnp.ndarray, multipliers, primes) -> jnp.ndarray:
  """Row of every head's table for the n-gram in each window.

  Args:
    windows: `[..., n]` int tokens, `windows[..., j]` j steps back (see `token_windows`).
    multipliers: `[heads, n]` odd uint32 (`hash_multipliers`), a static array or sequence.
    primes: `[heads]` table sizes, each < 2^31, a static array or sequence.

  Returns:
    `[..., heads]` int32: `(XOR_j windows[..., j] * multipliers[h, j] mod 2^32) mod primes[h]`.
  """
  multipliers = jnp.asarray(multipliers, jnp.uint32)
  words = windows.astype(jnp.uint32)[..., None, :] * multipliers  # [..., heads, n], wraps mod 2^32
  mixed = words[..., 0]
  for j in range(1, multipliers.shape[-1]):
    mixed = mixed ^ words[..., j]
  return (mixed % jnp.asarray(primes, jnp.uint32)).astype(jnp.int32)


def expected_collision_rate(num_ngrams: int, rows: int) -> float:
  """Expected share of `num_ngrams` distinct n-grams that share their row with another one when
  hashed uniformly into `rows` rows: `1 - (1 - 1/rows)^(num_ngrams - 1)`."""
  return 1.0 - (1.0 - 1.0 / rows) ** (num_ngrams - 1)
