"""Bad configs and inputs: each exits non-zero with one line on stderr that names the field, and no
traceback, before anything is compiled. Mostly in-process through `run_app` (fast); a few through
the real command line."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from absl import flags
from flax import nnx
from conftest import REPO_ROOT
from faults import make_env
from helpers import tiny_config

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.train import cli, validate
from memzoo.train.config import base_config
from memzoo.train.state import abstract_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return make_env(tmp_path_factory.mktemp("corpus"))["MEMZOO_TEST_CORPUS"]


def config_file(directory, body: str) -> str:
  path = directory / "bad_config.py"
  path.write_text("import ml_collections\nfrom memzoo.train.config import base_config\n\n"
                  f"def get_config():\n  config = base_config()\n  {body}\n  return config\n")
  return str(path)


def run_in_process(argv, capsys) -> tuple[int, str]:
  """`memzoo-train argv` through cli.run_app with fresh flags: (exit code, stderr)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.run_app(cli._train_flags, ["memzoo-train", *argv], flags.FlagValues())
  return exit_info.value.code, capsys.readouterr().err


BAD_OVERRIDES = [
    (["--config.model.d_modle=3"], "config.model.d_modle"),
    (["--config.model.attention.windw=3"], "config.model.attention.windw"),
    (["--config.data.contxt=64"], "config.data.contxt"),
    (["--config.train.steps=abc"], "config.train.steps"),
    (["--config.train.steps=0"], "config.train.steps"),
    (["--config.train.steps=-5"], "config.train.steps"),
    (["--config.train.batch_size=0"], "config.train.batch_size"),
    (["--config.train.lr=0"], "config.train.lr"),
    (["--config.train.lr=-0.001"], "config.train.lr"),
    (["--config.train.min_lr=0.1"], "config.train.min_lr"),
    (["--config.train.warmup_steps=-1"], "config.train.warmup_steps"),
    (["--config.train.b2=1.5"], "config.train.b2"),
    (["--config.train.log_every=0"], "config.train.log_every"),
    (["--config.train.eval_every=0"], "config.train.eval_every"),
    (["--config.train.checkpoint_every=0"], "config.train.checkpoint_every"),
    (["--config.train.keep_checkpoints=0"], "config.train.keep_checkpoints"),
    (["--config.train.max_bad_steps=0"], "config.train.max_bad_steps"),
    (["--config.train.debug_nan_steps=(0,)"], "config.train.debug_nan_steps"),
    (["--config.train.eval_steps=100000"], "config.train.eval_steps"),
    (["--config.seed=-1"], "config.seed"),
    (["--config.model.mixers=('attention','atention')"], "config.model.mixers"),
    (["--config.model.ffn=mlp"], "config.model.ffn"),
    (["--config.model.d_model=130"], "config.model.d_model"),
    (["--config.model.num_kv_heads=3"], "config.model.num_kv_heads"),
    (["--config.model.num_layers=0"], "config.model.num_layers"),
    (["--config.model.dtype=int8"], "config.model.dtype"),
    (["--config.model.vocab_size=10"], "config.model.vocab_size"),
    (["--config.model.attention.block_q=0"], "config.model.attention.block_q"),
    (["--config.model.attention.impl=fast"], "config.model.attention.impl"),
    (["--config.model.mixers=('lmm',)", "--config.model.lmm.depth=0"], "config.model.lmm.depth"),
    (["--config.model.mixers=('gla',)", "--config.model.gla.expand_k=-1.0"],
     "config.model.gla.expand_k"),
    (["--config.model.mixers=('gla',)", "--config.model.gla.expand_v=0.01"],
     "config.model.gla.expand_v"),  # positive, but no width left per head: the layer's check
    (["--config.model.mixers=('mac',)", "--config.model.mac.memory.chunk_size=0"],
     "config.model.mac.memory.chunk_size"),  # a nested layer's options
    (["--config.model.engram_layers=(0,)", "--config.model.engram.ngram_heads=0"],
     "config.model.engram.ngram_heads"),
    (["--config.mesh.data=2"], "config.mesh"),
    (["--config.mesh.data=-1", "--config.mesh.fsdp=-1"], "config.mesh"),
    (["--config.mesh.tensor=0"], "config.mesh.tensor"),
    (["--config.data.path=/no/such/file.txt"], "config.data.path"),
    (["--config.data.path=/"], "config.data.path: '/': a directory, not a file"),
    (["--config.data.seq_len=0"], "config.data.seq_len"),
    (["--config.data.tokenizer=bpe"], "config.data.tokenizer"),
    (["--config.data.task=nope"], "config.data.task"),
    (["--config.data.val_fraction=1.5"], "config.data.val_fraction"),
    (["stray_argument"], "unexpected arguments"),
]


@pytest.mark.parametrize("overrides, field", BAD_OVERRIDES,
                         ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_naming_the_field(overrides, field, corpus, tmp_path, capsys):
  code, stderr = run_in_process([f"--workdir={tmp_path / 'run'}", f"--config.data.path={corpus}",
                                 *overrides], capsys)
  lines = stderr.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
  assert lines[0].startswith("memzoo: error: ") and field in lines[0], lines[0]
  assert not (tmp_path / "run" / "checkpoints").exists()  # failed before anything was built


BAD_FILES = [
    ("config.train.stpes = 10", "config.train.stpes"),
    ("config.trian = ml_collections.ConfigDict({'steps': 10})", "config.trian"),
    ("config.model.attention.windw = 3", "config.model.attention.windw"),
    ("config.train = ml_collections.ConfigDict({**config.train, 'steps': '100'})",
     "config.train.steps"),
    ("config.model.attention = {'window': 2.5}", "config.model.attention.window"),
    ("config.train.steps = '100'", "'steps'"),  # ConfigDict refuses it while get_config runs
    ("config.model = 5", "'model'"),
    ("config.train.update(steps=10, stpes=1)", "config.train.stpes"),
]


@pytest.mark.parametrize("body, field", BAD_FILES, ids=[b for b, _ in BAD_FILES])
def test_bad_config_file_is_one_line_naming_the_field(body, field, corpus, tmp_path, capsys):
  code, stderr = run_in_process([f"--config={config_file(tmp_path, body)}",
                                 f"--workdir={tmp_path / 'run'}", f"--config.data.path={corpus}"],
                                capsys)
  lines = stderr.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
  assert field in lines[0], lines[0]


@pytest.mark.parametrize("content, problem", [(b"", "is empty"),
                                              ("café ".encode("latin-1") * 2000, "not UTF-8")])
def test_bad_data_file_is_one_line(content, problem, tmp_path, capsys):
  data = tmp_path / "corpus.txt"
  data.write_bytes(content)
  code, stderr = run_in_process([f"--workdir={tmp_path / 'run'}", f"--config.data.path={data}"],
                                capsys)
  assert code == 2 and stderr.count("\n") == 1 and "config.data.path" in stderr, stderr
  assert problem in stderr


def test_workdir_that_is_a_file_is_one_line(corpus, tmp_path, capsys):
  (tmp_path / "file").write_text("")
  code, stderr = run_in_process([f"--workdir={tmp_path / 'file'}", f"--config.data.path={corpus}"],
                                capsys)
  assert code == 2 and stderr.count("\n") == 1 and "--workdir" in stderr, stderr


@pytest.mark.parametrize("mesh, batch, seq_len, field", [
    (dict(data=-1), 6, 16, "config.train.batch_size"),  # 6 rows over 4 data-parallel devices
    (dict(data=2, fsdp=2), 6, 16, "config.train.batch_size"),
    (dict(data=-1, sequence=2), 8, 15, "config.data.seq_len"),  # 15 tokens over 2 shards
    (dict(data=3), 12, 16, "config.mesh"),  # 3 devices of 4
])
def test_layout_against_four_devices(mesh, batch, seq_len, field):
  config = tiny_config()
  config.mesh.update(mesh)
  config.train.batch_size, config.data.seq_len = batch, seq_len
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    validate.check_layout(config, num_devices=4, num_processes=1)


def _fields(config, prefix="config"):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _fields(value, f"{prefix}.{key}")
    elif config.get_type(key) is not object:  # an `object` option accepts any value
      yield f"{prefix}.{key}"


@pytest.mark.parametrize("field", list(_fields(base_config())))
def test_every_field_rejects_a_value_of_the_wrong_type(field):
  config = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)
  *sections, name = field.split(".")[1:]
  node = config
  for section in sections:
    node = node[section]
  node[name] = b"wrong"
  with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ": expected"):
    validate.check_config(config)


def test_chunk_sizes_and_counts_of_any_registered_layer_are_checked(monkeypatch):
  class ChunkedMixer:
    def __init__(self, d_model: int, *, chunk_size: int = 64, num_memories: int = 0, rngs=None):
      del d_model, chunk_size, num_memories, rngs

  monkeypatch.setitem(registry.REGISTRIES["mixer"], "chunked", ChunkedMixer)
  config = base_config()
  config.model.chunked.chunk_size = 0
  with pytest.raises(ConfigError, match=r"config\.model\.chunked\.chunk_size: must be an int >= 1"):
    validate.check_config(config)
  config.model.chunked.update(chunk_size=16, num_memories=-1)
  with pytest.raises(ConfigError, match=r"chunked\.num_memories: must be an int >= 0"):
    validate.check_config(config)
  config.model.chunked.num_memories = 0
  validate.check_config(config)


def _numeric_options(node, path=()):
  """`(path, value)` of every int / float option under a layer's options, nested groups included."""
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _numeric_options(value, path + (key,))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield path + (key,), value


LAYERS = [(kind, name) for kind in ("mixer", "ffn", "input_branch")
          for name in registry.REGISTRIES[kind]]


@pytest.mark.parametrize("kind, layer", LAYERS, ids=[name for _, name in LAYERS])
def test_every_numeric_layer_option_at_zero_or_negative_is_a_config_error_or_works(kind, layer):
  """Each int / float option of the layer at 0, -1 (and a float at 0.01): `check_config` refuses
  it, or building and tracing the model either works or raises a ConfigError (what
  `validate.layer_errors` makes of a layer's own checks); never another exception, which the
  command line would print as a traceback."""
  def model_with(path, value):
    config = base_config()
    config.model.update(d_model=64, num_heads=2, num_layers=1, vocab_size=65)
    if kind == "mixer":
      config.model.mixers = (layer,)
    elif kind == "ffn":
      config.model.ffn = layer
    else:
      config.model.engram_layers = (0,)
    node = config.model[layer]
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = value
    return config

  for path, default in _numeric_options(base_config().model[layer]):
    for value in (0, -1) if isinstance(default, int) else (0.0, -1.0, 0.01):
      config = model_with(path, value)
      try:
        validate.check_config(config)
        with validate.layer_errors(config):
          graphdef, params = abstract_model(config.model, 0)
          jax.eval_shape(lambda p: nnx.merge(graphdef, p)(jnp.zeros((2, 32), jnp.int32)), params)
      except ConfigError:
        pass


@pytest.mark.parametrize("flag", ["--tokens=0", "--temperature=-1", "--top_k=0"])
def test_bad_sampling_flag_is_one_line(flag, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.run_app(cli._sample_flags, ["memzoo-sample", f"--workdir={tmp_path}", flag],
                flags.FlagValues())
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 2 and len(lines) == 1 and flag in lines[0], lines


def test_real_command_line_error_is_one_line(tmp_path):
  """Also through the real command line (test_cli.py and test_faults.py hold more)."""
  result = subprocess.run([sys.executable, "-m", "memzoo.train", f"--workdir={tmp_path}",
                           "--config.model.mixers=('attention','nope')"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
  assert lines[0].startswith("memzoo: error: config.model.mixers: unknown mixer 'nope'; choose "
                             "from attention"), lines[0]
