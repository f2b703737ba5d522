"""The command lines' re-execution with glibc's huge-page tunable (memzoo/train/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from memzoo.train import huge_pages

MADVISE = "always [madvise] never\n"


@pytest.mark.parametrize("environ, thp_mode, expected", [
    ({}, MADVISE, "glibc.malloc.hugetlb=1"),
    ({}, "[always] madvise never\n", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, MADVISE,
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE, None),  # the user's choice stands
    ({"MEMZOO_HUGE_PAGES": "0"}, MADVISE, None),
    ({}, "always madvise [never]\n", None),
    ({}, None, None),  # no THP in this kernel
])
def test_tunables(environ, thp_mode, expected):
  assert huge_pages.tunables_with_huge_pages(environ, thp_mode) == expected


@pytest.mark.parametrize("tunables, expected", [
    ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "glibc.malloc.arena_max=2"),
    ("glibc.malloc.hugetlb=1", ""),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2"),
    (None, ""),
])
def test_tunables_without_huge_pages(tunables, expected):
  environ = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
  assert huge_pages.tunables_without_huge_pages(environ) == expected


def _thp_usable() -> bool:
  try:
    mode = huge_pages.THP_MODE_FILE.read_text()
  except OSError:
    return False
  return sys.platform.startswith("linux") and huge_pages._glibc() and "[never]" not in mode


@pytest.mark.skipif(not _thp_usable(), reason="needs Linux, glibc and THP not 'never'")
def test_reexecutes_the_same_command_once():
  code = ("import os, sys; from memzoo.train import huge_pages; print('start', flush=True); "
          "huge_pages.exec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MEMZOO_HUGE_PAGES")}
  out = subprocess.run([sys.executable, "-c", code, "x", "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  # Started twice (the second time with the tunable set), re-executed once, argv kept.
  assert out == ["start", "start", "glibc.malloc.hugetlb=1 ['x', '--flag=1']"]


def test_describe(monkeypatch, tmp_path):
  mode = tmp_path / "enabled"
  mode.write_text(MADVISE)
  monkeypatch.setattr(huge_pages, "THP_MODE_FILE", mode)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert huge_pages.describe() == "glibc.malloc.hugetlb=1, THP madvise"
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setattr(huge_pages, "THP_MODE_FILE", tmp_path / "missing")
  assert huge_pages.describe() == "glibc.malloc.hugetlb unset, THP absent"
