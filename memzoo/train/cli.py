"""Command lines: `memzoo-train` (also `python -m memzoo.train`) and `memzoo-sample`.

  memzoo-train [--config configs/x.py] [--workdir DIR] [--config.<field>=<value> ...]
               [--overwrite] [--debug]

Re-running the same command resumes the run in --workdir; --overwrite moves it aside and starts
afresh. User errors (flags, config, data, checkpoints) print one line naming the field and exit 2
(3: training diverged); `--debug` shows the traceback instead. SIGTERM / SIGINT save a checkpoint
and exit 0.
"""

import re
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from memzoo.errors import UserError
from memzoo.train import huge_pages

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


def _flag_error(error: Exception, argv: list[str]) -> str:
  """One line for a flag, override or config-file error: names the `--config.<field>` when the
  error names only its last part, and sums up a config file's traceback as file, line, error."""
  text = str(error)
  if "Traceback (most recent call last)" in text:  # config_flags wraps get_config()'s traceback
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+)', text) if "-packages" not in f[0]]
    where = f"--config {frames[-1][0]}, line {frames[-1][1]}" if frames else "--config"
    return f"{where}: {_one_line(text.strip().splitlines()[-1])}"
  text = _one_line(error)
  if isinstance(error, SyntaxError) or "get_config" in text:
    return f"--config: {text}"
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("--") and "." in name and f"--{name}" not in text:
      unknown = [part for part in name.split(".")[1:] if f"'{part}'" in text]
      if unknown:
        return f"--{name}: no field {unknown[0]!r} ({text})"
  return text


def run_app(define_flags, argv: list[str] | None = None, flag_values=None) -> None:
  """Defines the flags (`define_flags(flag_values, argv)` returns `main`), parses `argv`, runs main.

  `argv` defaults to sys.argv and `flag_values` to absl's global FLAGS (tests pass their own to run
  in-process). Bad input (flags, config, data, checkpoints, files) prints one line naming the field
  and exits with the error's code (2); `--debug` shows the traceback instead.
  """
  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FLAGS if flag_values is None else flag_values
  debug = "--debug" in argv
  started = False
  try:
    main = define_flags(flag_values, argv)  # config_flags loads the config file and overrides here
    rest = flag_values(argv)
    if len(rest) > 1:
      raise UserError(f"unexpected arguments {rest[1:]}; flags take the form --name=value")
    if not debug:
      logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
    started = True
    main()
  except UserError as e:
    if debug:
      raise
    print(f"memzoo: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(e.exit_code)
  except OSError as e:  # a file or directory that cannot be read or written
    if debug:
      raise
    print(f"memzoo: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # a malformed flag or override, raised while defining or parsing flags
    if started or debug:
      raise
    print(f"memzoo: error: bad command line: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


def _train_flags(values, argv):
  config_flag = config_flags.DEFINE_config_file(
      "config", default_config_path(), "experiment config file (a .py with get_config())",
      flag_values=values, lock_config=False, sys_argv=argv)
  workdir_flag = flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>)",
                                     flag_values=values)
  overwrite_flag = flags.DEFINE_bool(
      "overwrite", False, "move an existing run in --workdir aside (to <workdir>.replaced-<time>) "
      "and start afresh, instead of resuming it", flag_values=values)
  flags.DEFINE_bool("debug", False, "show tracebacks for user errors", flag_values=values)

  def main():
    # Imported after flag parsing: a faster --help.
    from memzoo.train import compilation_cache, distributed, validate
    from memzoo.train.trainer import train
    config_file = values["config"].config_filename
    if not Path(config_file).is_file():
      raise UserError(f"--config: no such config file {config_file!r}; pass a .py config file")
    validate.check_config(config_flag.value)
    distributed.split_cpu_host(config_flag.value)  # before the backend starts
    distributed.apply_cpu_flags()
    compilation_cache.enable(config_flag.value.train.compilation_cache_dir)
    train(config_flag.value, workdir_flag.value or f"runs/{Path(config_file).stem}",
          overwrite=overwrite_flag.value)

  return main


def train_main() -> None:
  huge_pages.exec_with_huge_pages()
  run_app(_train_flags)


def _sample_flags(values, argv):
  del argv
  define = dict(flag_values=values)
  workdir_flag = flags.DEFINE_string("workdir", None, "run directory to sample from",
                                     required=True, **define)
  prompt_flag = flags.DEFINE_string("prompt", "\n", "text to continue", **define)
  tokens_flag = flags.DEFINE_integer("tokens", 200, "number of tokens to generate", lower_bound=1,
                                     **define)
  temperature_flag = flags.DEFINE_float("temperature", 0.8, "softmax temperature (0: greedy)",
                                        lower_bound=0.0, **define)
  top_k_flag = flags.DEFINE_integer("top_k", None, "sample among the k most likely tokens",
                                    lower_bound=1, **define)
  seed_flag = flags.DEFINE_integer("seed", 0, "sampling seed", **define)
  flags.DEFINE_bool("debug", False, "show tracebacks for user errors", **define)

  def main():
    from memzoo.train.sample import sample_text
    print(sample_text(workdir_flag.value, prompt_flag.value, tokens_flag.value,
                      temperature_flag.value, top_k_flag.value, seed_flag.value))

  return main


def sample_main() -> None:
  huge_pages.exec_with_huge_pages()
  run_app(_sample_flags)
