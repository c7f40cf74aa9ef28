"""M2, the PoLar network scored over a menu: its loss, and a fit that learns a per-input choice.

`polar train --method menu`, which fits it on menu runs, is tested in tests/test_training_menu.py.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from polar.predictor import decode, load, save
from polar.programs import Program
from polar.selection.matrix import Matrix
from polar.selection.menu_network import MenuNetwork, menu_loss
from polar.selection.policies import score
from polar.settings import MenuNetworkConfig

PROGRAMS = ("0-5", "0-2,4-5", "0-3,3-5", "0-3,0-1")  # full depth, a skip, a repeat, one with no compact form


def _split(seed: int, n: int = 96) -> tuple[Matrix, torch.Tensor, torch.Tensor]:
    """Two kinds of question (their token vectors point two ways). Base greedy is right on a third of them;
    the skip fixes the rest of kind A, the repeat the rest of kind B, and each breaks the other kind."""
    rng = np.random.default_rng(seed)
    kind = rng.random(n) < 0.5
    base = rng.random(n) < 1 / 3
    correct = np.stack([base, np.where(kind, True, False), np.where(kind, False, True), base], 1)
    direction = torch.randn(2, 8, generator=torch.Generator().manual_seed(7))
    x = direction[torch.from_numpy(kind.astype(np.int64))][:, None, :].repeat(1, 3, 1)
    x = x + 0.3 * torch.randn(n, 3, 8, generator=torch.Generator().manual_seed(seed))
    ids = [f"s{seed}/{i}" for i in range(n)]
    matrix = Matrix(
        ids=tuple(ids),
        levels=np.array(["1"] * n),
        programs=PROGRAMS,
        layers=np.array([6, 5, 7, 8]),
        correct=correct,
        inputs=pd.DataFrame({"id": ids, "question": [f"{seed} q{i}" for i in range(n)]}),
    )
    return matrix, x, torch.ones(n, 3)


def test_menu_loss_is_minus_the_log_probability_of_the_right_programs():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0 + 1e-9]]))
    correct = torch.tensor([[False, True, True, True]])
    usable = torch.tensor([True, True, True, False])  # the last program takes no part
    assert menu_loss(scores, correct, usable).item() == pytest.approx(-math.log(0.5), rel=1e-6)


def test_m2_learns_which_program_suits_which_question():
    (train, x, m), (val, xv, mv), (test, xt, mt) = _split(0), _split(1), _split(2)
    config = MenuNetworkConfig(
        m2_steps=300, m2_batch=16, m2_lr=2e-3, m2_d_model=32, m2_ff=64, m2_dropout=0.0, m2_eval_every=50
    )
    net = MenuNetwork(config, PROGRAMS, 6, 8).fit(train, x, m, val, xv, mv, 0.01)
    assert not net.usable[3] and net.proba(xt, mt)[:, 3].max() == 0.0  # never chooses what it cannot emit
    assert {h["step"] for h in net.history} == {50, 100, 150, 200, 250, 300}
    chosen = net.select(test, xt, mt, "accuracy", "m2")
    result = score(test, chosen)
    assert result.correct >= 0.95 * len(test.ids) > 2.5 * test.correct[:, 0].sum()  # the program of its kind
    assert result.p_vs_base < 1e-6 and chosen.cost.mean() < 7  # no pass of the base model is charged
    with pytest.raises(ValueError, match="another menu"):
        MenuNetwork(config, PROGRAMS[:3], 6, 8).fit(train, x, m, val, xv, mv, 0.01)
    with pytest.raises(ValueError, match="must be the full depth"):
        MenuNetwork(config, PROGRAMS[::-1], 6, 8)


def test_m2_refuses_a_matrix_with_nothing_to_learn():
    train, x, m = _split(0)
    flat = Matrix(train.ids, train.levels, PROGRAMS, train.layers, np.ones_like(train.correct), train.inputs)
    config = MenuNetworkConfig(m2_steps=10, m2_d_model=16, m2_ff=32)
    with pytest.raises(ValueError, match="nothing to learn"):
        MenuNetwork(config, PROGRAMS, 6, 8).fit(flat, x, m, train, x, m, 0.01)


def test_the_saved_predictor_makes_the_selection_it_was_measured_with(tmp_path):
    """What is served (predict: each question alone, decode by the menu) is the selection scored in the bench."""
    (train, x, m), (val, xv, mv), (test, xt, mt) = _split(0), _split(1), _split(2)
    config = MenuNetworkConfig(
        m2_steps=100, m2_batch=16, m2_lr=2e-3, m2_d_model=32, m2_ff=64, m2_dropout=0.0, m2_eval_every=50
    )
    net = MenuNetwork(config, PROGRAMS, 6, 8).fit(train, x, m, val, xv, mv, 0.01)
    save(net.predictor("accuracy", {"x": 1}), tmp_path / "p")
    model = load(tmp_path / "p")
    assert model.config.menu == PROGRAMS and model.config.menu_threshold == net.tuned["accuracy"]
    chosen = net.select(test, xt, mt, "accuracy", "m2").choice
    served = []
    for i in range(len(test.ids)):
        b, o = model(xt[i : i + 1], mt[i : i + 1])
        ranked = decode(b[0], o[0], model.config, k=3)
        assert Program.parse(PROGRAMS[3]) not in ranked  # no compact form: never offered
        served.append(PROGRAMS.index(ranked[0].text))
    assert served == chosen.tolist() and len(set(served)) > 1
    with pytest.raises(ValueError, match="only the accuracy mode"):
        net.predictor("efficiency")


def test_efficiency_mode_keeps_the_full_depth_when_no_checkpoint_stays_within_the_margin():
    """Train teaches the skip; on validation only the full depth is right, so every price loses accuracy."""
    (train, x, m), (val, xv, mv) = _split(0), _split(1)
    n = len(train.ids)
    train = Matrix(
        train.ids, train.levels, PROGRAMS, train.layers, np.tile([False, True, False, False], (n, 1)), train.inputs
    )
    val = Matrix(val.ids, val.levels, PROGRAMS, val.layers, np.tile([True, False, False, False], (n, 1)), val.inputs)
    config = MenuNetworkConfig(
        m2_steps=100, m2_batch=16, m2_lr=2e-3, m2_d_model=32, m2_ff=64, m2_dropout=0.0, m2_eval_every=50
    )
    net = MenuNetwork(config, PROGRAMS, 6, 8).fit(train, x, m, val, xv, mv, 0.01)
    assert net.tuned["efficiency"] is None and "efficiency" not in net.states
    chosen = net.select(val, xv, mv, "efficiency", "m2")
    assert chosen.choice.tolist() == [0] * n and chosen.cost.mean() == 6
    assert net.select(val, xv, mv, "accuracy", "m2").choice.tolist() == [0] * n  # the threshold keeps it too
