"""Per-mixer micro-benchmarks: training fwd+bwd time per token as T grows, and decode step time as
the context grows.

Both build one mixer layer from the registry (`build_mixer`) with its default options unless told
otherwise, so every registered mixer (Titans, MoM, ... as they land) is benchmarked the same way.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memzoo.bench.timing import Timing, time_call, time_interleaved
from memzoo.models.layers import registry


def build_mixer(name: str, options: dict, *, d_model: int, num_heads: int, dtype):
  model_cfg = {"d_model": d_model, "num_heads": num_heads, "dtype": dtype, name: options}
  return registry.build("mixer", name, model_cfg, rngs=nnx.Rngs(0))


class FwdBwdBench:
  """Training fwd+bwd of one mixer layer: a jitted `(params, x, cotangent) -> grads` (of its
  parameters and of the input), compiled once per input shape."""

  def __init__(self, name: str, options: dict, *, d_model: int, num_heads: int, dtype):
    self.layer = build_mixer(name, options, d_model=d_model, num_heads=num_heads, dtype=dtype)
    graphdef, self.params = nnx.split(self.layer)
    self.d_model, self.dtype = d_model, dtype

    def loss(params, x, cotangent):
      y = nnx.merge(graphdef, params)(x)
      return jnp.sum(y.astype(jnp.float32) * cotangent)

    self.fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))

  def time(self, batch: int, length: int, *, repeats: int,
           min_seconds: float = 0.0) -> tuple[Timing, int]:
    """`(timing of one fwd+bwd call on [batch, length, d_model], its model FLOPs)`: the median of
    `repeats` calls, or of as many as fill `min_seconds`."""
    rng = np.random.default_rng(length)
    x = jnp.asarray(rng.standard_normal((batch, length, self.d_model)), self.dtype)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    flops = self.layer.flops(batch, length) + self.layer.backward_flops(batch, length)
    timing = time_call(self.fwd_bwd, self.params, x, cotangent, repeats=repeats,
                       min_seconds=min_seconds)
    return timing, flops


class DecodeBench:
  """Decode steps of one mixer after a prefilled context, as `memzoo.train.sample.generate` runs
  them (a jitted `lax.scan` of `step`).

  `time(contexts)` prefills each context's random tokens (state sized for `context + steps` tokens),
  then times the scan of `steps` steps after each. The scan is one jitted function for all contexts:
  it compiles again only when the state's shape changes (attention's KV cache grows with `max_len`;
  recurrent states do not), and `compiles` counts how often it did.
  """

  def __init__(self, name: str, options: dict, *, batch: int, steps: int, d_model: int,
               num_heads: int, dtype):
    self.layer = build_mixer(name, options, d_model=d_model, num_heads=num_heads, dtype=dtype)
    self.graphdef, self.params = nnx.split(self.layer)
    self.batch, self.steps, self.d_model, self.dtype = batch, steps, d_model, dtype
    self.compiles = 0
    self.prefill = jax.jit(lambda p, x, s: nnx.merge(self.graphdef, p).prefill(x, s))
    self.decode = jax.jit(self._decode)

  def _decode(self, params, xs, state):
    self.compiles += 1  # runs at trace time only
    mixer = nnx.merge(self.graphdef, params)

    def body(state, x_t):
      y_t, state = mixer.step(x_t, state)
      return state, y_t

    return jax.lax.scan(body, state, xs)

  def time(self, contexts: list[int], *, repeats: int) -> dict[int, Timing]:
    """`{context: Timing of one decode step}` (the scan's time over `steps`), the contexts timed
    in interleaved rounds (see `timing.time_interleaved`)."""
    args = {}
    for context in contexts:
      rng = np.random.default_rng(context)
      prompt = jnp.asarray(rng.standard_normal((self.batch, context, self.d_model)), self.dtype)
      state = self.layer.init_state(self.batch, context + self.steps)
      _, state = self.prefill(self.params, prompt, state)
      xs = jnp.asarray(rng.standard_normal((self.steps, self.batch, self.d_model)), self.dtype)
      args[context] = (self.params, xs, state)
    timings = time_interleaved(self.decode, args, repeats=repeats)
    return {c: Timing(t.wall / self.steps, t.cpu / self.steps, t.repeats)
            for c, t in timings.items()}
