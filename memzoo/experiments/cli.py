"""What `memzoo-sweep` and `memzoo-report` share: user errors print one line and exit 2."""

import sys

from memzoo.errors import UserError


def one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def run(main, argv=None) -> None:
  """Calls `main(argv)`; a UserError prints `memzoo: error: ...` and exits 2 (`--debug`: raises)."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    main(argv)
  except UserError as e:
    if "--debug" in argv:
      raise
    print(f"memzoo: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
