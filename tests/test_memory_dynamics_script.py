"""experiments/titans/memory_dynamics.py: its chunk step is the op's own update."""

import experiment_scripts
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memzoo.models.layers.neural_memory import NeuralMemory


def _script():
  return experiment_scripts.load("titans/memory_dynamics.py")


@pytest.mark.parametrize("depth", [1, 2])
def test_first_chunk_step_is_the_ops_update(depth):
  """Without momentum and forgetting, one chunk moves the weights by exactly -sum theta_t g_t."""
  chunk, d = 4, 16
  memory = NeuralMemory(d, 2, chunk_size=chunk, depth=depth, momentum=False, weight_decay=False,
                        conv=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, chunk, d))
  feats = {n: memory.features(n, x)[0] for n in "qkv"}
  state, _ = memory.initial_state(3)
  if depth == 1:  # zero initial weights: give the ratio a denominator
    state = state._replace(weights=(jnp.ones_like(state.weights[0]),),
                           anchor=(jnp.ones_like(state.weights[0]),))
  _, new = memory.write(feats, x, state)
  moved = [jnp.linalg.norm(b - a, axis=(-2, -1)) / jnp.linalg.norm(a, axis=(-2, -1))
           for a, b in zip(state.weights, new.weights)]
  steps = _script().first_chunk_step(memory, feats, memory.gates(x), state.weights)
  np.testing.assert_allclose(steps, [float(jnp.mean(m)) for m in moved], rtol=1e-4)
