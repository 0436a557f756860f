"""Evaluation of trained models: multiple-choice benchmarks (MMLU / C-Eval / CMMLU style).

``tunery eval`` calls ``benchmark.run_benchmark``; ``taskdata`` reads benchmark
task folders; ``convert`` turns the official MMLU / C-Eval / CMMLU downloads
into that folder format; ``tasks/`` holds Tunery's own small sample tasks.
"""
