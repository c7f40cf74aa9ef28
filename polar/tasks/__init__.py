"""Tasks: one schema for synthetic levels and real benchmarks, prompts, answer extraction."""
