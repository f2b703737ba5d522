"""Configs: the base config, command-line overrides, JSON round trip, layer options."""

import pytest
from absl import flags
from ml_collections import config_flags

from memzoo.errors import ConfigError
from memzoo.models.layers import registry
from memzoo.train import config as config_lib
from memzoo.train.cli import default_config_path


def parse(*overrides):
  argv = ["prog", f"--config={default_config_path()}", *overrides]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", default_config_path(), flag_values=values,
                                           lock_config=False, sys_argv=argv)
  values(argv)
  return holder.value


def test_default_config_is_nanogpt_cpu_baseline():
  c = parse()
  assert (c.model.num_layers, c.model.num_heads, c.model.d_model) == (4, 4, 128)
  assert (c.data.seq_len, c.train.batch_size, c.train.steps) == (64, 12, 2000)
  assert (c.train.lr, c.train.min_lr) == (1e-3, 1e-4)


def test_overrides_are_typed():
  c = parse("--config.model.d_model=256", "--config.model.mixers=('attention','attention')",
            "--config.train.lr=3e-4", "--config.model.attention.window=32",
            "--config.data.path=/tmp/x.txt", "--config.model.num_kv_heads=2")
  assert c.model.d_model == 256 and c.train.lr == 3e-4
  assert c.model.mixers == ("attention", "attention")
  assert c.model.attention.window == 32 and c.data.path == "/tmp/x.txt"
  assert c.model.num_kv_heads == 2


@pytest.mark.parametrize("override", ["--config.model.d_modle=3", "--config.train.steps=abc"])
def test_bad_overrides_are_rejected(override):
  with pytest.raises(Exception):
    parse(override)


def test_every_registered_layer_has_its_options_in_the_base_config():
  c = config_lib.base_config()
  for kind in registry.REGISTRIES:
    for name, cls in registry.REGISTRIES[kind].items():
      assert set(c.model[name].keys()) == set(config_lib.layer_options(cls).keys())
  assert "rope_theta" in c.model.attention and "d_model" not in c.model.attention


def test_json_round_trip():
  c = parse("--config.model.mixers=('attention','attention')")
  back = config_lib.from_json(config_lib.to_json(c))
  assert back == c and back.model.mixers == ("attention", "attention")


def test_unknown_layer_option_names_the_field():
  model = config_lib.base_config().model
  model.vocab_size = 10
  model.attention = {"windw": 3}
  with pytest.raises(ConfigError, match=r"config\.model\.attention\.windw"):
    registry.build("mixer", "attention", model, rngs=None)
  with pytest.raises(ConfigError, match="unknown mixer"):
    registry.build("mixer", "no_such_mixer", model, rngs=None)
