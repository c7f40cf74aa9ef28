"""The menu chain's own stages as commands: make the menu, and select a program per input over it.

The splits are labeled with ``polar label --menu FILE`` and validated with ``polar validate --menu SPLIT=FOLDER``;
the served evaluation and the registration are ``polar evaluate --selection`` and ``polar register --selection``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from polar.cli.options import DeviceOpt, ModelOpt, app, configured, console, fail, scores_table
from polar.settings import EngineConfig, LabelConfig, MenuConfig, SelectConfig


@app.command(name="menu")
@configured(config=LabelConfig, dense=MenuConfig, engine=EngineConfig)
def menu_cmd(
    out: Annotated[str, typer.Option(help="The menu file to write (one program per line).")],
    discovery_out: Annotated[
        str, typer.Option(help="Label folder of the discovery search (resumable; kept for lineage).")
    ],
    model: ModelOpt = "smollm2-135m",
    tasks: Annotated[str, typer.Option(help="Task file of the training split (`polar ingest`).")] = (
        "data/tasks/train.parquet"
    ),
    restart_on_change: Annotated[
        bool, typer.Option(help="Start the discovery over when its folder holds labels made with other settings.")
    ] = False,
    device: DeviceOpt = "auto",
    *,
    config: LabelConfig,
    dense: MenuConfig,
    engine: EngineConfig,
) -> None:
    """Make the menu every split is labeled with: search the first --discovery-inputs training inputs (MCTS),
    then write the full depth and the K programs valid on the most of them (--menu auto:K), or check a menu file.
    """
    from polar.backbone import ModelSpecError
    from polar.hf import UnsupportedModelError
    from polar.labeling.discovery import make_menu

    try:
        path, name = make_menu(model, tasks, discovery_out, out, config, dense, device, restart_on_change, engine)
    except (ValueError, FileNotFoundError, ModelSpecError, UnsupportedModelError) as err:
        fail(str(err))
    console.print(f"menu {name}: {path} (label every split with `polar label --menu {path}`)")


@app.command(name="select")
@configured(config=SelectConfig)
def select_cmd(
    train: Annotated[list[str], typer.Option(help="Menu folder(s) of the training split (repeatable: shards).")],
    validation: Annotated[str, typer.Option(help="Menu folder of the validation split: where choices are made.")],
    test: Annotated[str, typer.Option(help="Menu folder of the test split: read once, after the choices are frozen.")],
    out: Annotated[str, typer.Option(help="Output folder: frozen.json, test.json, choices.parquet.")],
    selectors: Annotated[
        str | None, typer.Option(help="Where the servable selectors go (default: OUT/selectors).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model for hidden-state features (default: the menus').")
    ] = None,
    cache: Annotated[
        str | None, typer.Option(help="Folder of model-computed features (default: OUT/features).")
    ] = None,
    device: DeviceOpt = "cpu",
    *,
    config: SelectConfig,
) -> None:
    """Fit every selector on train, freeze the choices on validation, then score each once on test.

    Writes frozen.json (every candidate's validation score and the two winners) before the test matrix is read, the
    servable selectors (the baseline, and each winner that can be served), and test.json with one score row per
    candidate: pass@1 with its 95% interval and the exact McNemar test against base greedy.
    """
    from polar.backbone import ModelSpecError
    from polar.selection.study import select

    try:
        result = select(train, validation, test, out, config, selectors, model, cache, device)
    except (ValueError, FileNotFoundError, ModelSpecError) as err:
        fail(str(err))
    title = f"{result.test['B0 base greedy'].inputs} test inputs (every choice frozen on validation)"
    table = scores_table(result.test.values(), title)
    console.print(table)
    console.print(result.summary, soft_wrap=True, markup=False)
    console.print(f"study: {out}")
