"""Recurrent state size: the x-axis of Zoology's recall-vs-memory plots.

Zoology (`zoology/model.py: LanguageModel.state_size`) sums each layer's per-sequence decode state:
attention 2·d_model·T (its KV cache), sliding window 2·window·d_model, a linear-recurrent layer its
matrix memory H·d_k·d_v (plus the short-conv state where there is one), Mamba(2) 2·d_model·d_state;
it plots that count times 4 (bytes in float32). memzoo measures the same quantity instead of
re-deriving it per mixer: every float in the state that `LanguageModel.init_state` allocates for
one sequence, so a new mixer is accounted for as soon as it implements `init_state`.
"""

import jax
import jax.numpy as jnp

from memzoo.train.state import build_model


def state_size(model_cfg, seq_len: int) -> int:
  """Floats the model keeps per sequence to decode after `seq_len` tokens, summed over layers.

  `model_cfg` is a resolved `config.model` (vocab_size set, as in a run's config.json). Nothing is
  allocated: the model and its state are only traced for their shapes.
  """
  state = jax.eval_shape(lambda: build_model(model_cfg, 0).init_state(1, seq_len))
  return sum(leaf.size for leaf in jax.tree.leaves(state)
             if jnp.issubdtype(leaf.dtype, jnp.floating))
