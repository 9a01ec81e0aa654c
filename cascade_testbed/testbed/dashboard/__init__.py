"""The live view of a running test (`testbed up/run --dashboard`, `testbed watch URL`):
`series` turns the server's status into chart rows (pure), `app` polls and serves the page.
The chart library is uPlot 1.6.31 (MIT, static/uPlot.LICENSE), vendored so it works offline."""
