"""`python -m memzoo.bench` == `memzoo-bench`."""

from memzoo.bench.cli import main

main()
