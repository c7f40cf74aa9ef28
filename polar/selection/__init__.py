"""Per-input program selection over a menu's reward matrix: the study that decides what is served.

- :mod:`~polar.selection.matrix`: the reward matrix of a ``polar label --menu`` folder, its splits.
- :mod:`~polar.selection.policies`: the choice rules (static, per level, gates, gain and price, the oracle,
  the winner rules) and their cost in layers.
- :mod:`~polar.selection.gain_model`: M1, a learned chance per program from input features.
- :mod:`~polar.selection.menu_network`: M2, the PoLar network scored over the menu.
- :mod:`~polar.selection.candidates`: every candidate fitted on train and tuned on validation.
- :mod:`~polar.selection.study`: the select stage, frozen on validation, test read once.
- :mod:`~polar.selection.selector`: the servable selector folder the registry logs.
- :mod:`~polar.selection.served`: the evaluate stage of the menu chain, the winners run on the model.

Statistics live in :mod:`polar.stats`. Importing this package loads nothing heavy; import the modules.
"""
