"""The files of a selection study, by name: what the select, evaluate and register stages hand each other.

The select stage's folder holds ``frozen.json`` (written before the test matrix is read), ``test.json`` (the one
look at test, with the digest of ``frozen.json``) and ``choices.parquet`` (each candidate's program per test input);
its selectors folder holds one servable selector per role. The evaluate stage's folder holds ``metrics.json`` and
``versions/<role>.json`` (each servable selector's served evaluation, in the registry's format).
"""

FROZEN = "frozen.json"
TEST = "test.json"
CHOICES = "choices.parquet"
VERSIONS = "versions"
ROLES = ("baseline", "accuracy", "efficiency")  # the full depth, and the two modes' winners
