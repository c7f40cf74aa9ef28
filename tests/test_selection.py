"""Selection over a menu matrix: baselines chosen on train and validation, every pass counted, honest scores."""

import numpy as np
import pandas as pd
import pytest

from polar.selection.matrix import Matrix, check_disjoint
from polar.selection.policies import (
    BASE,
    best_per_level,
    best_static,
    gated,
    oracle,
    per_level,
    score,
    shortest_within,
    static,
    tune_gate,
    winners,
)

PROGRAMS = ["0-5", "0-4", "0-3,3-5"]  # the full depth first; 5 and 7 layers
LAYERS = [6, 5, 8]


def _matrix(folder, correct, levels, agreement=None, questions=None):
    """Write a menu folder as `polar label --menu` does: rewards.parquet and inputs.parquet."""
    n = len(correct)
    ids = [f"{folder.name}/{i}" for i in range(n)]
    rewards = pd.DataFrame(
        [
            {"id": ids[i], "level": levels[i], "program": p, "correct": bool(correct[i][j]), "layers": LAYERS[j]}
            for i in range(n)
            for j, p in enumerate(PROGRAMS)
        ]
    )
    inputs = pd.DataFrame(
        {
            "id": ids,
            "level": levels,
            "question": questions or [f"{folder.name} question {i}" for i in range(n)],
            "base_logprob": np.linspace(-2, 0, n),
            "sample_agreement": agreement if agreement is not None else np.linspace(0, 1, n),
        }
    )
    folder.mkdir(parents=True)
    rewards.to_parquet(folder / "rewards.parquet")
    inputs.to_parquet(folder / "inputs.parquet")
    return Matrix.load(folder)


def test_baselines_choose_on_train_and_count_every_layer(tmp_path):
    correct = [[1, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [0, 0, 1]]
    train = _matrix(tmp_path / "train", correct, ["1", "1", "1", "2", "2", "2"])
    assert train.programs == tuple(PROGRAMS) and train.depth == 6
    assert best_static(train) == 1  # 3 right with 5 layers beats 3 right with 8 (ties go to fewer layers)
    assert best_per_level(train) == {"1": 1, "2": 2}
    chosen = per_level(train, best_per_level(train))
    result = score(train, chosen)
    assert result.correct == 6 and result.fixes == 4 and result.breaks == 0
    assert result.layers_ratio == pytest.approx((3 * 5 + 3 * 8) / 6 / 6)
    base = score(train, static(train, 0))
    assert base.correct == 2 and base.p_vs_base == 1.0 and base.layers_ratio == 1.0
    assert result.p_vs_base == pytest.approx(0.125)  # 4 fixes, 0 breaks: 2 * 0.5**4


def test_the_confidence_gate_pays_for_its_passes(tmp_path):
    # Base greedy is right where its samples agree (agreement >= 0.5); program 1 fixes the others.
    correct = [[0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]]
    val = _matrix(tmp_path / "val", correct, ["1"] * 4, agreement=[0.0, 0.25, 0.75, 1.0])
    threshold = tune_gate(val, 1, "sample_agreement")
    assert threshold == 0.75  # program 1 on the two low-agreement inputs only
    gate = gated(val, 1, "sample_agreement", threshold, samples=4)
    result = score(val, gate)
    assert result.correct == 4 and result.breaks == 0
    # Every input pays the greedy pass and 4 samples; the two gated ones run program 1 too.
    assert gate.cost.tolist() == [5 * 6 + 5, 5 * 6 + 5, 30.0, 30.0]
    never = gated(val, 1, "base_logprob", -np.inf)
    assert never.choice.tolist() == [0] * 4 and never.cost.tolist() == [6.0] * 4
    with pytest.raises(ValueError, match="no confidence feature 'nope'"):
        gated(val, 1, "nope", 0.0)


def test_splits_must_be_disjoint_and_whole(tmp_path):
    a = _matrix(tmp_path / "a", [[1, 0, 0]], ["1"], questions=["What is 2 + 2?"])
    b = _matrix(tmp_path / "b", [[1, 0, 0]], ["1"], questions=["what is  2 + 2?"])
    with pytest.raises(ValueError, match="the train and test matrices share the question"):
        check_disjoint(train=a, test=b)
    with pytest.raises(FileNotFoundError, match="label it first"):
        Matrix.load(tmp_path / "nowhere")
    # Parts of one split labeled apart join into one matrix; parts that share inputs do not.
    joined = Matrix.concat([a, _matrix(tmp_path / "d", [[0, 1, 1], [1, 1, 0]], ["2", "2"])])
    assert joined.correct.tolist() == [[1, 0, 0], [0, 1, 1], [1, 1, 0]] and joined.levels.tolist() == ["1", "2", "2"]
    with pytest.raises(ValueError, match="share inputs"):
        Matrix.concat([a, a])
    _matrix(tmp_path / "c", [[1, 0, 0], [0, 1, 0]], ["1", "1"])
    pd.read_parquet(tmp_path / "c" / "rewards.parquet").iloc[:-1].to_parquet(tmp_path / "c" / "rewards.parquet")
    with pytest.raises(ValueError, match="some inputs lack some programs"):
        Matrix.load(tmp_path / "c")


def test_the_oracle_takes_the_shortest_right_program_and_the_winner_rules(tmp_path):
    # Programs: the full depth (6 layers), 0-4 (5), 0-3,3-5 (8).
    correct = [[1, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]]
    m = _matrix(tmp_path / "m", correct, ["1"] * 4)
    best = oracle(m, "ceiling")
    assert best.name == "ceiling" and best.choice.tolist() == [1, 2, 0, 0]  # nothing right: the full depth
    assert score(m, best).correct == 3 and best.cost.tolist() == [5.0, 8.0, 6.0, 6.0]
    assert shortest_within(m, margin=0.0) == 0  # 0-4 loses an input the full depth answers
    assert shortest_within(m, margin=0.25) == 1  # within one input of four: the shorter program
    rows = {
        BASE: score(m, static(m, 0, BASE)),
        "short": score(m, static(m, 1, "short")),
        "long": score(m, static(m, 2, "long")),
        "ceiling": score(m, best),
    }
    # Accuracy: the most right (the ceiling, 3/4); efficiency: the fewest layers among those within the margin of
    # base's 2/4 (base at 1.0 D against long's 1.33 and the ceiling's 1.04; short, 1/4, is outside the margin).
    assert winners(rows, margin=0.0) == {"accuracy": "ceiling", "efficiency": BASE}
    assert winners(rows, margin=0.25)["efficiency"] == "short"
    tie = {BASE: rows[BASE], "same": score(m, static(m, 0, "same"))}
    assert winners(tie, margin=0.0) == {"accuracy": BASE, "efficiency": BASE}  # ties go to the earlier candidate
