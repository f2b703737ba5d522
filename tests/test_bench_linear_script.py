"""experiments/bench_linear/bench.py's summary lines, on made-up timings."""

import experiment_scripts


def test_flatness_reports_medians_rounds_and_fastest_rounds():
  bench = experiment_scripts.load("bench_linear/bench.py")
  rounds = {"deltanet": {1024: [50.0, 40.0, 60.0], 16384: [70.0, 44.0, 55.0]},
            "attention_naive": {1024: [1.0, 1.0, 1.0], 16384: [9.0, 9.0, 9.0]}}
  results = {row: {t: sorted(v)[1] for t, v in cells.items()} for row, cells in rounds.items()}
  lines = bench.flatness(results, rounds, [1024, 16384], start=1024)
  # medians 50 -> 55 (+10%); rounds +40%, +10%, -8%; fastest rounds 40 -> 44 (+10%);
  # attention rows are not linear layers and get no line.
  assert lines == ["- deltanet: +10% from T=1024 to T=16384 (rounds: +40%, +10%, -8%; "
                   "fastest rounds: +10%)"]
