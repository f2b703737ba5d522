"""Command lines: `memzoo-train` (also `python -m memzoo.train`) and `memzoo-sample`.

  memzoo-train [--config configs/x.py] [--workdir DIR] [--config.<field>=<value> ...] [--debug]

User errors (config, data, checkpoint) print one line naming the field and exit 2; `--debug`
shows the traceback instead.
"""

import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from memzoo.errors import UserError

DEFAULT_CONFIG = "configs/shakespeare_char.py"


def default_config_path() -> str:
  """`configs/shakespeare_char.py` in the working directory, else in the memzoo checkout."""
  if Path(DEFAULT_CONFIG).is_file():
    return DEFAULT_CONFIG
  return str(Path(__file__).resolve().parents[2] / DEFAULT_CONFIG)


def _one_line(error: Exception) -> str:
  text = str(error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a repr'd KeyError message
    text = text[1:-1].replace("\\'", "'").replace("\\n", " ")
  return " ".join(text.split())


def run_app(define_flags) -> None:
  """Defines and parses the flags, then runs the `main()` that `define_flags()` returns.

  Bad input (flags, config, data, checkpoints) prints one line naming the field and exits 2;
  `--debug` shows the traceback instead.
  """
  debug = "--debug" in sys.argv
  started = False
  try:
    main = define_flags()  # config_flags loads the config file and its overrides here
    argv = flags.FLAGS(sys.argv)
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if not debug:
      logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
    started = True
    main()
  except UserError as e:
    if debug:
      raise
    print(f"memzoo: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # a malformed flag or override, raised while defining or parsing flags
    if started or debug:
      raise
    print(f"memzoo: error: bad command line: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _train_flags():
  config_flag = config_flags.DEFINE_config_file(
      "config", default_config_path(), "experiment config file (a .py with get_config())",
      lock_config=False)
  workdir_flag = flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>)")
  flags.DEFINE_bool("debug", False, "show tracebacks for user errors")

  def main():
    from memzoo.train.trainer import train  # imported after flag parsing: faster --help
    config_file = flags.FLAGS["config"].config_filename
    if not Path(config_file).is_file():
      raise UserError(f"--config: no such config file {config_file!r}; pass a .py config file")
    train(config_flag.value, workdir_flag.value or f"runs/{Path(config_file).stem}")

  return main


def train_main() -> None:
  run_app(_train_flags)


def _sample_flags():
  workdir_flag = flags.DEFINE_string("workdir", None, "run directory to sample from", required=True)
  prompt_flag = flags.DEFINE_string("prompt", "\n", "text to continue")
  tokens_flag = flags.DEFINE_integer("tokens", 200, "number of tokens to generate")
  temperature_flag = flags.DEFINE_float("temperature", 0.8, "softmax temperature (0: greedy)")
  top_k_flag = flags.DEFINE_integer("top_k", None, "sample among the k most likely tokens")
  seed_flag = flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_bool("debug", False, "show tracebacks for user errors")

  def main():
    from memzoo.train.sample import sample_text
    print(sample_text(workdir_flag.value, prompt_flag.value, tokens_flag.value,
                      temperature_flag.value, top_k_flag.value, seed_flag.value))

  return main


def sample_main() -> None:
  run_app(_sample_flags)
