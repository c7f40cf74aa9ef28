"""M1, the learned selector over a menu: features and what they cost, gain models, tuning on validation."""

import numpy as np
import pandas as pd
import pytest

from polar.selection.gain_model import GainModel, features, hidden_features, shared_prefix
from polar.selection.matrix import Matrix
from polar.selection.policies import choose_cheap, choose_gain, score, tune_price, tune_threshold

PROGRAMS = ["0-5", "0-2,4-5", "0-5,5"]  # the full depth, a skip (5 layers), a repeat (7)


def _matrix(seed: int, n: int = 300) -> Matrix:
    """Base greedy is right when its answer is confident; the skip fixes exactly the unconfident level-2 inputs
    (its repeat never helps), so a selector that reads confidence and level can find every fix."""
    rng = np.random.default_rng(seed)
    level = rng.choice(["1", "2"], n)
    logprob = rng.uniform(-3, 0, n)
    base = logprob > -1.5
    skip = np.where(level == "2", ~base, base & (rng.random(n) < 0.5))
    correct = np.stack([base, skip, base & (rng.random(n) < 0.3)], 1)
    ids = [f"s{seed}/{i}" for i in range(n)]
    return Matrix(
        ids=tuple(ids),
        levels=level,
        programs=tuple(PROGRAMS),
        layers=np.array([6, 5, 7]),
        correct=correct,
        inputs=pd.DataFrame(
            {
                "id": ids,
                "question": [f"{seed} q{i}" for i in range(n)],
                "base_logprob": logprob,
                "base_margin": rng.random(n),
                "base_entropy": rng.random(n),
                "sample_agreement": rng.random(n),
            }
        ),
    )


@pytest.mark.parametrize("kind", ["logistic", "boosted"])
def test_the_gain_model_finds_the_inputs_a_program_fixes(kind):
    train, val, test = _matrix(0), _matrix(1), _matrix(2)
    names = ("level", "confidence")
    model = GainModel(kind, c=10.0).fit(train, features(train, names))
    fv, ft = features(val, names), features(test, names)
    assert fv.passes == 1  # confidence costs the greedy pass
    threshold = tune_threshold(val, model.proba(fv))
    chosen = choose_gain(test, model.proba(ft), threshold, ft.passes, "m1")
    result = score(test, chosen)
    unconfident_level2 = (test.levels == "2") & ~test.correct[:, 0]
    assert result.fixes >= 0.9 * unconfident_level2.sum() and result.breaks <= 0.05 * len(test.ids)
    assert result.p_vs_base < 1e-6
    # Every input pays the greedy pass; those switched run their program on top (its answer is the one kept).
    switched = chosen.choice != 0
    assert np.all(chosen.cost[~switched] == 6) and np.all(chosen.cost[switched] == 6 + 5)
    never = choose_gain(test, model.proba(ft), np.inf, ft.passes, "never")
    assert never.choice.tolist() == [0] * len(test.ids)


def test_efficiency_mode_trades_layers_within_the_margin():
    train, val = _matrix(0), _matrix(1)
    f = features(train, ("level",))
    assert f.passes == 0  # the level is free: no pass before the chosen program
    model = GainModel("logistic").fit(train, f)
    fv = features(val, ("level",))
    price = tune_price(val, model.proba(fv), fv.passes, margin=0.01)
    cheap = choose_cheap(val, model.proba(fv), price, fv.passes, "cheap")
    assert cheap.choice.sum() > 0 and cheap.cost.mean() < 6  # some inputs run the 5-layer skip
    assert val.correct[np.arange(len(val.ids)), cheap.choice].mean() >= val.correct[:, 0].mean() - 0.01
    assert np.all(cheap.cost == val.layers[cheap.choice])  # no feature pass to pay


def test_features_refuse_what_they_cannot_price():
    m = _matrix(0, n=10)
    assert shared_prefix(m.programs) == 3  # 0-5, 0-2 then 4-5, 0-5 then 5: layers 0, 1, 2 come first in all
    with pytest.raises(ValueError, match="compute hidden_features"):
        features(m, ("hidden:3",))
    with pytest.raises(ValueError, match="shares only its first 3 layers"):
        features(m, ("hidden:4",), {"hidden:4": np.zeros((10, 8))})
    assert features(m, ("hidden:3",), {"hidden:3": np.zeros((10, 8))}).passes == 0
    assert features(m, ("hidden:6",), {"hidden:6": np.zeros((10, 8))}).passes == 1
    assert features(m, ("question",), {"question": np.zeros((10, 8))}).passes == 0
    with pytest.raises(ValueError, match="9 rows for 10 inputs"):
        features(m, ("question",), {"question": np.zeros((9, 8))})
    assert features(m, ("agreement",), samples=4).passes == 5
    with pytest.raises(ValueError, match="no feature 'nope'"):
        features(m, ("nope",))


def test_hidden_features_read_the_prompt_as_labeled(tiny_dir):
    from conftest import TEST_PROMPT

    from polar.backbone import load
    from polar.tasks.prompts import PromptSpec

    backbone = load(str(tiny_dir), device="cpu")
    prompt = PromptSpec.from_dict(TEST_PROMPT)
    questions, levels = ["What is 3 + 4?", "What is 12 + 30?", "What is 1 + 1?"], ["1", "1", "2"]
    x = hidden_features(backbone, prompt, questions, levels, layers=2, batch=2)
    width = backbone.model.config.hidden_size
    assert x.shape == (3, 2 * width) and np.isfinite(x).all()
    # Batching and padding change nothing: each row equals that input run alone.
    alone = [hidden_features(backbone, prompt, [q], [lv], layers=2) for q, lv in zip(questions, levels, strict=True)]
    alone = np.concatenate(alone)
    np.testing.assert_allclose(x, alone, atol=1e-4)
    with pytest.raises(ValueError, match="write hidden:N"):
        hidden_features(backbone, prompt, questions, levels, layers=99)


def test_levels_of_any_name_are_features_and_unseen_ones_do_not_break_it():
    from dataclasses import replace

    train, test = _matrix(0), _matrix(2)
    names = {"1": "algebra", "2": "geometry"}
    renamed = [replace(m, levels=np.array([names[x] for x in m.levels])) for m in (train, test)]
    base = GainModel("logistic", c=10.0).fit(train, features(train, ("level", "confidence")))
    other = GainModel("logistic", c=10.0).fit(renamed[0], features(renamed[0], ("level", "confidence")))
    np.testing.assert_allclose(
        other.proba(features(renamed[1], ("level", "confidence"))),
        base.proba(features(test, ("level", "confidence"))),
    )
    unseen = replace(test, levels=np.array(["topology"] * len(test.ids)))
    proba = other.proba(features(unseen, ("level", "confidence")))
    assert proba.shape == (len(test.ids), len(PROGRAMS)) and np.isfinite(proba).all()


def test_the_tuned_threshold_can_switch_every_input():
    """When every validation input gains by switching, the threshold is -inf (a finite one would keep the
    input of lowest estimated gain on the full depth)."""
    val = _matrix(1, n=20)
    val = Matrix(
        val.ids,
        val.levels,
        val.programs,
        val.layers,
        np.stack([np.zeros(20, bool)] + [np.ones(20, bool)] * 2, 1),
        val.inputs,
    )
    proba = np.column_stack([np.full(20, 0.1), np.linspace(0.5, 0.9, 20), np.zeros(20)])
    assert tune_threshold(val, proba) == -np.inf
    assert score(val, choose_gain(val, proba, -np.inf, 0, "m1")).correct == 20
