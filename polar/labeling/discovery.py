"""The menu stage: discover programs by search on a slice of the training inputs, and write the menu file.

A dense menu needs programs worth running on every input. :func:`make_menu` searches the first
``discovery_inputs`` training inputs with MCTS (the label settings; a resumable label folder of its own) and, for
an ``auto:K`` menu, writes the full-depth program and the ``K`` programs valid on the most of them as a menu file;
a menu given as a file is checked against the model and copied. Every split is then labeled with that one file
(``polar label --menu FILE``), so train, validation and test share one menu.
"""

from __future__ import annotations

from pathlib import Path

from polar.labeling.menu import menu_id, resolve_menu, write_menu
from polar.labeling.run import label
from polar.settings import EngineConfig, LabelConfig, MenuConfig

__all__ = ["make_menu"]


def make_menu(
    model: str,
    tasks: str | Path,
    discovery_dir: str | Path,
    out: str | Path,
    config: LabelConfig = LabelConfig(),
    dense: MenuConfig = MenuConfig(),
    device: str = "auto",
    restart_on_change: bool = False,
    engine: EngineConfig | None = None,
) -> tuple[Path, str]:
    """Write the menu of ``dense.menu`` (``auto:K`` or a file) for ``model`` to ``out``.

    Args:
        tasks: the training split; its first ``dense.discovery_inputs`` inputs are searched for an auto menu.
        discovery_dir: the search's label folder (resumable: a killed run keeps the inputs it searched).
        engine: the dtype and threads of the search (default: :class:`~polar.settings.EngineConfig`'s).

    Returns:
        The menu file and the menu's id.
    """
    from polar.backbone import model_depth

    if not dense.menu:
        raise ValueError("no menu to make: set menu.menu to auto:K (e.g. auto:15) or to a menu file")
    discovery = ""
    if dense.menu.startswith("auto:"):
        if dense.discovery_inputs < 1:
            raise ValueError(f"an auto menu needs discovery_inputs >= 1, got {dense.discovery_inputs}")
        label(
            model,
            tasks,
            discovery_dir,
            config,
            limit=dense.discovery_inputs,
            device=device,
            engine=engine,
            restart_on_change=restart_on_change,
        )
        discovery = str(discovery_dir)
    depth = model_depth(model)
    prompt = config.prompt_spec(tasks)
    programs = resolve_menu(dense.menu, depth, config.search.max_visits, prompt, discovery)
    name = menu_id(programs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = f" from {dense.discovery_inputs} inputs searched into {discovery_dir}" if discovery else ""
    write_menu(out, programs, f"{name}: {dense.menu}{source}")
    return out, name
