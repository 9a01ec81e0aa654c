"""`testbed claims`: each paper's headline claim, run the way the paper tests it.

`catalog` says what each claim compares (a scenario of `scenarios/claims/` with two named
arms, the metric, the paper's number), `runner` runs both arms on the same seeds and `stats`
turns the per-seed effects into a 95 % interval and a verdict. docs/claims.md holds a full run.
"""
