"""What a finished run or sweep becomes: records collected into a summary (`collect`, `metrics`),
the series figures are drawn from (`series`), the figures and the markdown report."""
