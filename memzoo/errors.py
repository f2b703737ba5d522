"""User-facing errors: one line that names the field and the fix; no traceback unless --debug."""


class UserError(ValueError):
  """Bad input from the user (config, data, checkpoint, shapes)."""

  exit_code = 2


class ConfigError(UserError):
  """A config field is wrong. The message starts with the field's dotted name."""

  def __init__(self, field: str, problem: str, fix: str = ""):
    self.field = field
    message = f"{field}: {problem}"
    super().__init__(f"{message}; {fix}" if fix else message)


class TrainingDiverged(UserError):
  """Too many consecutive steps had a non-finite loss or gradient (config.train.max_bad_steps)."""

  exit_code = 3
