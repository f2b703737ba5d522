"""The interface every sequence mixer follows (see memzoo/models/README.md)."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

State = Any


class Mixer(nnx.Module):
  """A sequence mixer maps `[B, T, d_model] -> [B, T, d_model]`, causally.

  Training:  `y = mixer(x, segment_ids=None)`; `segment_ids [B, T]` int marks packed documents, and
             no information flows between different ids.
  Decoding:  `state = mixer.init_state(batch_size, max_len)`; then any mix of
             `y, state = mixer.prefill(x, state)`   (a block of tokens, `[B, T, d]`) and
             `y_t, state = mixer.step(x_t, state)`  (one token, `[B, d]`).
             The state is a pytree of arrays with a fixed shape (jit once, decode forever);
             `max_len` bounds the total tokens for mixers whose state grows (attention's KV cache).
  Invariant: prefill(x[:, :s]) then step() on each later token == mixer(x), up to float error.

  Auxiliary losses: `y, aux = mixer.mix_with_aux(x, segment_ids=None)` also returns the layer's
             auxiliary training loss, a float32 scalar (0 by default; MoM's load balancing).
             The LM sums it over layers and the trainer adds `config.model.aux_loss_coef` times
             the sum. Returned, not sown: `nnx.capture` fails under `nnx.remat` / `nnx.scan` for
             modules that hold an `nnx.List` (flax 0.12.8).

  Subclasses implement `__call__`, `init_state` and `step`; the default `prefill` scans `step`,
  and mixers with a parallel form override it. Mixers with an auxiliary loss override
  `mix_with_aux` and make `__call__` return its first output.
  """

  def __call__(self, x: jnp.ndarray, *, segment_ids: jnp.ndarray | None = None) -> jnp.ndarray:
    raise NotImplementedError

  def mix_with_aux(self, x: jnp.ndarray, *,
                   segment_ids: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self(x, segment_ids=segment_ids), jnp.zeros((), jnp.float32)

  def init_state(self, batch_size: int, max_len: int) -> State:
    raise NotImplementedError

  def step(self, x_t: jnp.ndarray, state: State) -> tuple[jnp.ndarray, State]:
    raise NotImplementedError

  def prefill(self, x: jnp.ndarray, state: State) -> tuple[jnp.ndarray, State]:
    def body(s, x_t):
      y_t, s = self.step(x_t, s)
      return s, y_t
    state, ys = jax.lax.scan(body, state, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), state
