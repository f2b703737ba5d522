"""Linear-recurrent mixers under a mesh with a `sequence` axis: the model and a full train step
(through `memzoo.train.trainer`) equal their single-device runs; the mixers switch to the
sequence-parallel form by themselves."""

import json

import numpy as np

# Trains 3 steps of a hybrid Gated DeltaNet + attention model on each mesh; prints losses and the
# final parameters' leaves as JSON.
TRAIN_SCRIPT = """
import json, sys, tempfile
import jax
sys.path.insert(0, "tests")
from helpers import tiny_config, train_steps
from memzoo.train import trainer

results = {}
for name, mesh in {"sequence1": dict(data=8), "sequence4": dict(data=2, sequence=4)}.items():
  config = tiny_config(mixers=("gated_deltanet", "attention"))
  config.model.gated_deltanet.chunk_size = 3  # shards of 4 tokens: 2 chunks, one partial
  config.model.attention.update(block_q=4, block_k=4)  # ring blocks pad to the block size
  config.train.update(batch_size=8, steps=3, eval_every=100, checkpoint_every=100)
  config.mesh.update(mesh)
  run = trainer.setup(config, tempfile.mkdtemp())
  state, losses = train_steps(run, run.state, 3)
  run.checkpoints.close()
  params = jax.tree.leaves(jax.device_get(state.params))
  results[name] = {"losses": losses, "params": [p.tolist() for p in params]}
print(json.dumps(results))
"""


def test_train_steps_with_sequence_axis_match_one_device(on_devices):
  out = on_devices(TRAIN_SCRIPT, devices=8)
  results = json.loads(out.strip().splitlines()[-1])
  want, got = results["sequence1"], results["sequence4"]
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
  assert len(got["params"]) == len(want["params"])
  for i, (g, w) in enumerate(zip(got["params"], want["params"])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"parameter leaf {i}")
