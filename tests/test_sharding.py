"""Sharded training on 8 CPU devices (subprocesses): every mesh matches one device, parameters
are laid out as the rules say, and checkpoints move between meshes."""

import json

import numpy as np

# Runs 5 train steps of a tiny model on each mesh in MESHES and prints {mesh: losses} as JSON.
LOSSES_SCRIPT = """
import json, sys, tempfile
import jax
sys.path.insert(0, "tests")
from helpers import tiny_config, train_steps
from memzoo.train import trainer

results = {}
for name, mesh in MESHES.items():
  config = tiny_config()
  config.train.update(batch_size=8, steps=5, eval_every=100, checkpoint_every=100)
  config.mesh.update(mesh)
  run = trainer.setup(config, tempfile.mkdtemp())
  _, results[name] = train_steps(run, run.state, 5)
  run.checkpoints.close()
print(json.dumps(results))
"""


def losses_on(on_devices, devices, meshes):
  out = on_devices(f"MESHES = {meshes!r}\n" + LOSSES_SCRIPT, devices=devices)
  return json.loads(out.strip().splitlines()[-1])


def test_every_mesh_matches_one_device(on_devices):
  reference = losses_on(on_devices, 1, {"one": {}})["one"]
  meshes = {"data8": dict(data=8), "data2_fsdp4": dict(data=2, fsdp=4),
            "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
            "fsdp8": dict(data=1, fsdp=8)}
  for name, losses in losses_on(on_devices, 8, meshes).items():
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=name)


def test_parameter_and_optimizer_shardings_follow_the_rules(on_devices):
  on_devices("""
import sys, tempfile
import jax
from jax.sharding import PartitionSpec as P
sys.path.insert(0, "tests")
from helpers import tiny_config
from memzoo.train import trainer

config = tiny_config()
config.train.batch_size = 8
config.mesh.update(data=2, fsdp=2, tensor=2)
run = trainer.setup(config, tempfile.mkdtemp())
params = run.state.params
block = params["stack"]["blocks"][0]
specs = {
    "q_proj": (block["mixer"]["q_proj"]["kernel"], P("fsdp", "tensor", None)),
    "o_proj": (block["mixer"]["o_proj"]["kernel"], P("tensor", None, "fsdp")),
    "ffn.up": (block["ffn"]["up"]["kernel"], P("fsdp", "tensor")),
    "ffn.down": (block["ffn"]["down"]["kernel"], P("tensor", "fsdp")),
    "embed (vocab 65 does not split in 2)": (params["embed"], P(None, "fsdp")),
    "norm": (block["mixer_norm"]["scale"], P("fsdp")),
}
for name, (array, spec) in specs.items():
  assert array.sharding.spec == spec, (name, array.sharding.spec, spec)
adam = run.state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
mu = adam.mu["stack"]["blocks"][0]["mixer"]["q_proj"]["kernel"]
assert mu.sharding.spec == P("fsdp", "tensor", None), mu.sharding.spec
run.checkpoints.close()
""")


def test_checkpoint_moves_between_meshes(on_devices, tmp_path):
  save = """
import sys
import jax, numpy as np
sys.path.insert(0, "tests")
from helpers import tiny_config
from memzoo.train import trainer
config = tiny_config()
config.train.update(batch_size=8, steps=2, eval_every=100, checkpoint_every=2)
config.mesh.update(MESH)
"""
  on_devices(save.replace("MESH", "dict(data=1, fsdp=8)") + f"""
trainer.train(config, {str(tmp_path)!r})
run = trainer.setup(config, {str(tmp_path)!r})
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(run.state.params))[0]
np.savez({str(tmp_path / 'params.npz')!r}, **{{jax.tree_util.keystr(k): v for k, v in flat}})
run.checkpoints.close()
""")
  compare = f"""
run = trainer.setup(config, {str(tmp_path)!r})
saved = np.load({str(tmp_path / 'params.npz')!r})
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(run.state.params))[0]
assert len(flat) == len(saved.files)
for path, value in flat:
  np.testing.assert_array_equal(value, saved[jax.tree_util.keystr(path)])
print(run.mesh.shape)
run.checkpoints.close()
"""
  out = on_devices(save.replace("MESH", "dict(data=2, tensor=4)") + compare, devices=8)
  assert "('tensor', 4)" in out
  out = on_devices(save.replace("MESH", "dict(data=1)") + compare, devices=1)
  assert "('data', 1)" in out
