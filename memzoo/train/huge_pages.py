"""Transparent huge pages for the buffers of XLA:CPU (and anything else this process mallocs).

memzoo's command lines (`memzoo-train`, `memzoo-sweep`, `memzoo-bench`, the experiments'
benchmarks) re-execute themselves once, at start-up, with `glibc.malloc.hugetlb=1` added to
`GLIBC_TUNABLES`: glibc then asks the kernel for 2 MiB pages (`madvise(MADV_HUGEPAGE)`) for the
large blocks it maps, which is where XLA:CPU's arguments, results and temporaries live. glibc reads
its tunables only when a process starts, hence the re-execution; child processes (a sweep's runs,
a benchmark's peer) inherit the setting.

Measured on an AMD EPYC host (Zen 4, 2 cores, THP in `madvise` mode; jax 0.10.2; session 15,
experiments/bench/README.md, experiments/bench_linear/README.md): the float32 train step of the
MFU benchmark, the setting alternating, 5.92 / 6.02 -> 5.44 / 5.57 s; fwd+bwd per token at T=16K
in the two runs of the linear-layer benchmark without / with it, retention 74.6 -> 62.0 us, Gated
DeltaNet 158.0 -> 124.6 us. A single matmul does not change; what gains is the rest, the
elementwise passes and mid-sized temporaries (by all signs the cost of 4 KiB pages: faults on
fresh buffers and TLB misses; not profiled further).

Nothing happens off Linux / glibc, when the kernel's THP mode is `never`, when `GLIBC_TUNABLES`
already sets `glibc.malloc.hugetlb` (the user's choice stands), or with `MEMZOO_HUGE_PAGES=0`.
"""

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
OPT_OUT = "MEMZOO_HUGE_PAGES"


def tunables_with_huge_pages(environ, thp_mode: str | None) -> str | None:
  """The `GLIBC_TUNABLES` value that adds huge pages to `environ`'s, or None to change nothing.

  `thp_mode` is the kernel's THP setting as its sysfs file reads (`always [madvise] never`), None
  when the kernel has none."""
  current = environ.get("GLIBC_TUNABLES", "")
  if environ.get(OPT_OUT) == "0" or TUNABLE in current:
    return None
  if thp_mode is None or "[never]" in thp_mode:
    return None
  return ":".join(filter(None, [current, f"{TUNABLE}=1"]))


def tunables_without_huge_pages(environ) -> str:
  """`environ`'s `GLIBC_TUNABLES` with the huge-page tunable taken out (for a child process that
  should run with 4 KiB pages, e.g. a peer benchmarked in its faster setting)."""
  return ":".join(t for t in _entries(environ) if not t.startswith(f"{TUNABLE}="))


def _entries(environ) -> list[str]:
  return [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]


def _glibc() -> bool:
  try:
    return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
  except (ValueError, OSError, AttributeError):
    return False


def _thp_mode() -> str | None:
  try:
    return THP_MODE_FILE.read_text()
  except OSError:
    return None


def describe() -> str:
  """This process's setting for a benchmark's machine line, e.g. `glibc.malloc.hugetlb=1, THP
  madvise`."""
  setting = next((t for t in _entries(os.environ) if t.startswith(f"{TUNABLE}=")),
                 f"{TUNABLE} unset")
  mode = _thp_mode()
  chosen = mode[mode.index("[") + 1:mode.index("]")] if mode and "[" in mode else "absent"
  return f"{setting}, THP {chosen}"


def exec_with_huge_pages() -> None:
  """Re-executes the running command (`sys.orig_argv`) with huge pages on, when
  `tunables_with_huge_pages` says to; otherwise, or if the exec fails, returns and the command goes
  on as it is. Call it first thing in a command line's main, before any work worth keeping."""
  if not sys.platform.startswith("linux") or not _glibc():
    return
  tunables = tunables_with_huge_pages(os.environ, _thp_mode())
  argv = getattr(sys, "orig_argv", None)
  if tunables is None or not argv or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, {**os.environ, "GLIBC_TUNABLES": tunables})
  except OSError:
    return
