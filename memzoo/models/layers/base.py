"""The interface every sequence mixer follows (see memzoo/models/README.md)."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

State = Any


class FlopCounted:
  """Analytic FLOP accounting, shared by every layer kind (memzoo/models/README.md, "FLOPs").

  `flops(batch, seq_len)` is the forward cost on `[batch, seq_len, d_model]`: 2 FLOPs per
  multiply-add of every contraction (matmuls, einsums, convolutions) in the form the layer trains
  with; elementwise work (norms, activations, exp, masks) and gathers are not counted.
  `backward_flops` is twice that (each contraction has two input gradients); recomputation under
  remat or inside a custom VJP is not counted (model FLOPs, Chowdhery et al. 2022, PaLM, App. B).
  """

  def flops(self, batch: int, seq_len: int) -> int:
    raise NotImplementedError(f"{type(self).__name__}.flops(batch, seq_len): implement the "
                              "layer's forward FLOP count (see memzoo/models/README.md)")

  def backward_flops(self, batch: int, seq_len: int) -> int:
    return 2 * self.flops(batch, seq_len)


class Mixer(FlopCounted, nnx.Module):
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

  Subclasses implement `__call__`, `init_state`, `step` and `flops` (see `FlopCounted`); the
  default `prefill` scans `step`, and mixers with a parallel form override it. Mixers with an
  auxiliary loss override `mix_with_aux` and make `__call__` return its first output.
  """

  def __init_subclass__(cls, **kwargs):
    """Each entry point of a subclass, its own or inherited, checks its input first
    (`_checks_input`), so a wrongly shaped `x` fails with one line naming it rather than deep
    inside a reshape."""
    super().__init_subclass__(**kwargs)
    for name, rank in (("__call__", 3), ("mix_with_aux", 3), ("prefill", 3), ("step", 2)):
      method = getattr(cls, name)
      if not hasattr(method, "checks_input"):
        setattr(cls, name, _checks_input(method, rank))

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


def _checks_input(method, rank: int):
  """`method(self, x, ...)` that first checks `x` is a float array of `rank` (3: `[B, T, d_model]`,
  2: one token, `[B, d_model]`)."""
  layout = "[B, T, d_model]" if rank == 3 else "[B, d_model]"

  @functools.wraps(method)
  def checked(self, x, *args, **kwargs):
    is_float = jnp.issubdtype(jnp.result_type(x), jnp.floating)
    if jnp.ndim(x) != rank or not is_float:
      fix = (f"give it the {layout} layout (x[None] adds a batch axis)" if is_float
             else "embed the tokens first")
      raise ValueError(f"{type(self).__name__}.{method.__name__}: x must be a float {layout} "
                       f"array, got {jnp.result_type(x)} of shape {jnp.shape(x)}; {fix}")
    return method(self, x, *args, **kwargs)
  checked.checks_input = rank
  return checked


class FeedForward(FlopCounted, nnx.Module):
  """A position-wise layer `[..., d_model] -> [..., d_model]` (`@register_ffn`), with `flops`."""

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    raise NotImplementedError
