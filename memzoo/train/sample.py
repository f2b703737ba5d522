"""Text generation from a run directory: the latest checkpoint, decoded with the mixers' step() path
(attention reads a preallocated KV cache; recurrent mixers carry their fixed-size state)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memzoo.data import tokenizers
from memzoo.errors import UserError
from memzoo.train import config as config_lib
from memzoo.train import state as state_lib
from memzoo.train.checkpoint import Checkpointer
from memzoo.train.mesh import make_mesh
from memzoo.train.optimizer import make_optimizer


def load_run(workdir) -> tuple:
  """`(config, tokenizer, model)` with the parameters of the latest checkpoint in `workdir`."""
  workdir = Path(workdir)
  if not (workdir / "config.json").is_file():
    raise UserError(f"--workdir: {str(workdir)!r} holds no config.json; point it at a run "
                    "directory")
  config = config_lib.from_json((workdir / "config.json").read_text())
  tokenizer_file = workdir / "tokenizer.json"
  tokenizer = tokenizers.from_json(tokenizer_file.read_text()) if tokenizer_file.is_file() else None
  checkpoints = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                             read_only=True)
  step = checkpoints.latest_step()
  if step is None:
    raise UserError(f"--workdir: {str(workdir)!r} has no checkpoint yet; train first")
  config.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  mesh = make_mesh(config.mesh, devices=jax.devices()[:1])
  graphdef, abstract_params = state_lib.abstract_model(config.model, config.seed)
  tx = make_optimizer(config.train, abstract_params)
  shardings = state_lib.state_shardings(abstract_params, tx, config.mesh.rules, mesh)
  target = state_lib.abstract_state(config.model, config.seed, tx, shardings)
  state = checkpoints.restore(step, target)
  checkpoints.close()
  return config, tokenizer, nnx.merge(graphdef, state.params)


def generate(model, prompt: jnp.ndarray, num_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, seed: int = 0) -> jnp.ndarray:
  """Continues `prompt [B, P]` by `num_tokens` sampled tokens; returns `[B, num_tokens]`.

  One jit: the prompt goes through `model.prefill`, the rest is a `lax.scan` of `model.step`.
  """
  batch, length = prompt.shape
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params, prompt, key):
    model = nnx.merge(graphdef, params)
    state = model.init_state(batch, length + num_tokens)
    logits, state = model.prefill(prompt, state)

    def pick(logits, key):
      if temperature == 0:
        return jnp.argmax(logits, axis=-1)
      logits = logits / temperature
      if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
      return jax.random.categorical(key, logits, axis=-1)

    def body(carry, key):
      token, state = carry
      logits, state = model.step(token, state)
      return (pick(logits, key), state), token

    # Each iteration emits the token it holds and samples the next one (the last sample is unused).
    keys = jax.random.split(key, num_tokens + 1)
    first = pick(logits[:, -1], keys[0])
    _, tokens = jax.lax.scan(body, (first, state), keys[1:])
    return tokens.T

  return run(params, prompt, jax.random.key(seed))


def sample_text(workdir, prompt: str, num_tokens: int, temperature: float = 0.8,
                top_k: int | None = None, seed: int = 0) -> str:
  """The prompt followed by `num_tokens` generated characters, from the run in `workdir`."""
  _, tokenizer, model = load_run(workdir)
  if tokenizer is None:
    raise UserError(f"--workdir: the run in {str(workdir)!r} has no tokenizer (a synthetic task)")
  if not prompt:
    raise UserError("--prompt: empty prompt; give at least one character")
  try:
    ids = tokenizer.encode(prompt)
  except ValueError as e:
    raise UserError(f"--prompt: {e}") from None
  out = generate(model, jnp.asarray(ids)[None], num_tokens, temperature=temperature, top_k=top_k,
                 seed=seed)
  return prompt + tokenizer.decode(np.asarray(out[0]))


if __name__ == "__main__":  # python -m memzoo.train.sample == memzoo-sample
  from memzoo.train.cli import sample_main
  sample_main()
