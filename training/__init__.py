"""Training stage: teachers, knowledge-distilled students, baselines."""
