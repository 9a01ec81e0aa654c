"""`testbed zoo init`: a model zoo from your own ONNX models and data (testbed/zoo_init.py,
docs/zoo.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cascade_testbed.testbed.commands.shared import console
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT

app = typer.Typer(help="Model zoos: your own models and data (docs/zoo.md).",
                  no_args_is_help=True)


@app.command("init")
def zoo_init(folder: Annotated[Path, typer.Argument(help="the new zoo's folder (new or empty)")],
             light: Annotated[list[str], typer.Option(
                 help="a light (device) model: PATH.onnx or NAME=PATH.onnx; repeat")],
             heavy: Annotated[list[str], typer.Option(
                 help="a heavy (server) model, the first is the default; repeat")],
             data: Annotated[Path, typer.Option(
                 help=".npz with x_val, y_val, x_test, y_test (uint8 pixels or float32)")],
             output: Annotated[list[str] | None, typer.Option(
                 help="the output holding class probabilities (or logits): NAME for every "
                      "model, or MODEL=NAME; default: by name (probabilities, probs, "
                      "output_probability, ...), else a float [batch, classes] tensor; repeat")
             ] = None,
             logits: Annotated[bool, typer.Option(
                 "--logits", help="the outputs are logits: apply a softmax (done anyway when "
                                  "values are outside [0, 1] or rows do not sum to 1)")
             ] = False,
             ) -> None:
    """Build a zoo from your ONNX models and dataset: copies them, measures accuracy, the
    threshold curves and latency on this host, and writes zoo.json and a card per model. Use
    it with `zoo = "FOLDER"` in a scenario: each light model becomes a tier of its name."""
    from cascade_testbed.testbed.zoo_init import ZooInitError, build_zoo

    try:
        index = build_zoo(folder, light, heavy, data, outputs=output or (), logits=logits)
    except ZooInitError as exc:
        console.print(f"[red]cannot build the zoo:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"zoo {folder}: tiers {', '.join(index['tiers'])}; heavy {index['heavy']}; "
                  f"data {index['dataset']['dtype']} ({index['dataset']['classes']} classes). "
                  f"Use it with zoo = \"{folder.resolve()}\" in a scenario.", soft_wrap=True)
    for model in index["models"]:
        out = json.loads((folder / f"{model}.json").read_text())["output"]
        console.print(f"  {model}: reads output {out['name']}"
                      + (" (logits, softmax applied)" if out["softmax"] else ""),
                      soft_wrap=True, highlight=False)
