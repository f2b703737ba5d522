"""Small configs shared by the tests."""

from memzoo.train.config import base_config


def tiny_config(**model):
  """A 2-layer d=32 char model on 16-token windows of tiny Shakespeare; a few steps."""
  config = base_config()
  config.data.seq_len = 16
  config.model.update({**dict(d_model=32, num_layers=2, num_heads=2), **model})
  config.train.update(steps=6, batch_size=4, warmup_steps=2, log_every=2, eval_every=3,
                      eval_steps=2, checkpoint_every=3)
  return config


def train_steps(run, state, steps: int) -> tuple:
  """`steps` train steps of a `trainer.setup` run from `state` on its next batches, under its mesh
  and rules: `(state, [loss of each step])`."""
  losses = []
  with run.context():
    for _ in range(steps):
      state, metrics = run.train_step(state, run.to_global(next(run.data)))
      losses.append(float(metrics["loss"]))
  return state, losses
