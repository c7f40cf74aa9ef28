"""A multiple-choice task end to end: ingested with its own split files, every split labeled by likelihood, the
study's answer rule fixed on validation, and the winners served by likelihood as the matrix says they answer."""

import json

import pytest
from test_labeling_menu import ARC_ROWS

from polar.ingest import ingest
from polar.labeling.folder import MenuRecord, read_labels
from polar.labeling.run import label
from polar.selection.files import FROZEN
from polar.selection.matrix import Matrix
from polar.selection.served import evaluate_selection
from polar.selection.study import choose_rule, select
from polar.settings import IngestConfig, LabelConfig, MenuConfig, MenuNetworkConfig, SelectConfig

pytestmark = pytest.mark.slow  # the bundled tokenizer

MENU = ["0-5", "0-3,5", "0-2,2-5", "1-5", "0-4"]


@pytest.fixture(scope="module")
def study(tiny_dir, tmp_path_factory):
    from polar.backbone import load

    root = tmp_path_factory.mktemp("choice-study")
    source = root / "arc"
    source.mkdir()
    rows = ARC_ROWS * 2  # 96 questions: the second copy reworded so that none repeats
    rows = [r if n < len(ARC_ROWS) else _reworded(r, n) for n, r in enumerate(rows)]
    for split, part in (("train", rows[:56]), ("dev", rows[56:76]), ("test", rows[76:])):
        (source / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    paths, _ = ingest(root / "tasks", IngestConfig(task="arc-easy", splits="files", source=str(source), shots=2))
    (root / "menu.txt").write_text("\n".join(MENU[1:]) + "\n")
    dense = MenuConfig(menu=str(root / "menu.txt"), scoring="likelihood", samples=2)
    config = LabelConfig(shots=1)
    backbone = load(str(tiny_dir), device="cpu")
    folders = {}
    for split in ("train", "validation", "test"):
        folders[split] = root / "menu" / split
        label(str(tiny_dir), paths[split], folders[split], config, dense, backbone=backbone)
    small = SelectConfig(m2=MenuNetworkConfig(m2_steps=10, m2_eval_every=5, m2_d_model=16, m2_ff=32))
    result = select([folders["train"]], folders["validation"], folders["test"], root / "select", small,
                    model=str(tiny_dir))  # fmt: skip
    metrics = evaluate_selection(root / "select", root / "select" / "selectors", paths["test"], root / "evaluate",
                                 backbone=backbone)  # fmt: skip
    return folders, result, json.loads(metrics.read_text()), root


def _reworded(row: dict, n: int) -> dict:
    question = dict(row["question"], stem=row["question"]["stem"].replace("Which thing", f"What item ({n})"))
    return dict(row, question=question)


def test_the_rule_is_fixed_on_validation_and_kept_for_test(study):
    folders, result, _, root = study
    frozen = json.loads((root / "select" / FROZEN).read_text())
    validation = Matrix.load(folders["validation"])
    assert validation.rules == ("sum", "norm") and frozen["scoring"] == "likelihood"
    assert frozen["rule"] == choose_rule(validation)
    chosen = validation.with_rule(frozen["rule"]["rule"])
    assert result.validation["B0 base greedy"].correct == int(chosen.correct[:, 0].sum())
    right = frozen["rule"]["validation_base_right"]
    assert right[frozen["rule"]["rule"]] == max(right.values())


def test_the_served_winners_answer_as_the_matrix_says(study):
    folders, result, metrics, _ = study
    for role, served in metrics["served"].items():
        assert served["agree_with_matrix"] == served["inputs"] == 20, role
    records = read_labels(folders["test"] / "menu.jsonl", MenuRecord)
    rule = json.loads((study[3] / "select" / FROZEN).read_text())["rule"]["rule"]
    base = sum((r.results[0].correct if rule == "sum" else r.results[0].correct_norm) for r in records)
    assert metrics["scores"]["B0 base greedy (served)"]["correct"] == base
    assert any(name.startswith("ShortGPT") for name in metrics["scores"])


def test_selectors_also_learn_from_the_likelihood(study):
    _, result, _, root = study
    frozen = json.loads((root / "select" / FROZEN).read_text())
    names = set(frozen["validation_scores"])
    assert any(n.startswith("M1 accuracy dense [") for n in names)
    assert "M2 accuracy PoLar network over the menu, likelihood target" in names
    assert frozen["choices"]["m2_dense"]["history"]  # trained on every row, checkpoints chosen on validation
    assert "Fitted to the likelihood gain, the best on validation" in result.summary
    assert result.summary.startswith("Answer rule: ")


def test_the_likelihood_target_is_a_softmax_of_the_gains():
    import numpy as np
    import torch

    from polar.selection.menu_network import likelihood_target, soft_menu_loss

    class M:
        answer_logprob = np.array([[-2.0, -1.0, -3.0], [-1.0, -1.0, -1.0]])

    usable = torch.tensor([True, True, False])
    target = likelihood_target(M, usable)
    assert target[0].tolist() == pytest.approx([1 / (1 + np.e), np.e / (1 + np.e), 0.0])
    assert target[1].tolist() == pytest.approx([0.5, 0.5, 0.0])
    scores = torch.log(target.clamp_min(1e-9))
    assert soft_menu_loss(scores, target, usable) <= soft_menu_loss(scores.flip(1), target, usable)


def test_the_stem_of_a_question_text():
    from polar.tasks.schema import Example, options_block, stem_of

    e = Example("t/1", "Which one?\nA. not this" + options_block(("x", "y. z", "w")), "B", "t", "all", "s", "choice",
                ("x", "y. z", "w"))  # fmt: skip
    assert stem_of(e.question) == e.stem == "Which one?\nA. not this"
    assert stem_of("What is 2 + 2?") == "What is 2 + 2?"
    assert stem_of("Pick one\nA. only a line") == "Pick one\nA. only a line"  # not a whole options block
