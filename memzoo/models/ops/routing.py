"""Top-k routing of tokens to experts / memories and the Switch load-balancing loss."""

import jax
import jax.numpy as jnp


def top_k_route(logits: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Softmax router with top-k selection, weights renormalised over the chosen k.

  Args:
    logits: `[..., E]` router logits.
    k: experts per token, `1 <= k <= E`.

  Returns:
    `(weights [..., k] float32, indices [..., k] int32, probs [..., E] float32)`: `probs` is the
    softmax over all E; `indices` the k largest logits in decreasing order, equal logits broken
    by the lower index (`lax.top_k`'s documented order), so routing is deterministic; `weights`
    their probabilities divided by their sum. Selecting on the logits rather than on the
    probabilities keeps logits that differ apart where their float32 probabilities round equal.
  """
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  _, indices = jax.lax.top_k(logits, k)
  chosen = jnp.take_along_axis(probs, indices, axis=-1)
  return chosen / jnp.sum(chosen, axis=-1, keepdims=True), indices, probs


def load_balancing_loss(probs: jnp.ndarray, indices: jnp.ndarray) -> jnp.ndarray:
  """Switch Transformer's auxiliary loss (Fedus et al. 2022, eq. 4), for top-k routing.

  `E * sum_e f_e * P_e` over all tokens of `probs [..., E]` / `indices [..., k]`, with
  f_e = the fraction of the N k token-to-expert assignments that go to e, and
  P_e = the mean router probability of e. Both sum to 1, so the loss is 1 for a uniform router and
  E for one that sends everything to one expert; k = 1 is Switch's formula exactly. Gradients
  flow through P only. (Mixtral's and fla's version counts f_e per token, summing to k: k times
  this value.)
  """
  num_experts = probs.shape[-1]
  assigned = jax.nn.one_hot(indices, num_experts, dtype=jnp.float32)  # [..., k, E]
  fraction = jnp.mean(assigned.reshape(-1, num_experts), axis=0)
  mean_prob = jnp.mean(probs.reshape(-1, num_experts).astype(jnp.float32), axis=0)
  return num_experts * jnp.sum(fraction * mean_prob)
