"""Hypothesis fuzzing of the parsers, the expander, references and the layer extractor (issue 7)."""
