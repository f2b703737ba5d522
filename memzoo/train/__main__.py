"""`python -m memzoo.train` == `memzoo-train`."""

from memzoo.train.cli import train_main

if __name__ == "__main__":
  train_main()
