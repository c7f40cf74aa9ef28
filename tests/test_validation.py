"""The great-expectations gate over label files: passes good labels, names what is wrong in bad ones."""

import json
import shutil

import pytest
from conftest import label_record

from polar.programs import CompactProgram, Program
from polar.settings import ValidateConfig
from polar.validation import ValidationFailed, validate

DEPTH = 10
SETTINGS = {
    "model": "m",
    "tasks": "t.parquet",
    "config": {"k_max": 4, "search": {"min_length_ratio": 0.55, "max_length_ratio": 1.2, "max_visits": 2}},
}


def _record(i: int, valid: list[str]) -> dict:
    shortest = min(valid, key=lambda t: len(Program.parse(t))) if valid else None
    compact = str(CompactProgram.from_program(Program.parse(shortest), DEPTH)) if shortest else None
    return {
        "id": f"x/{i}",
        "question": f"What is {i} + 1?",
        "level": "1",
        "model": "m",
        "depth": DEPTH,
        "base_correct": i % 2 == 0,
        "valid": valid,
        "shortest": shortest,
        "shortest_length": len(Program.parse(shortest)) if shortest else None,
        "compact": compact,
    }


def _write(folder, records, settings=SETTINGS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.jsonl").write_text(
        "".join(json.dumps(label_record(i, **r)) + "\n" for i, r in enumerate(records))
    )
    (folder / "settings.json").write_text(json.dumps(settings))
    return folder


GOOD = [_record(i, ["0-9", "0-3,5-9"] if i % 3 else ["0-9", "0-6,5-9"]) for i in range(12)]


def test_good_labels_pass_and_become_the_reference(tmp_path):
    labels = _write(tmp_path / "labels", GOOD)
    ref = tmp_path / "accepted" / "m.json"
    summary = validate(labels, tmp_path / "v", reference=ref)
    assert summary["success"] and not summary["drift_checked"]
    assert json.loads(ref.read_text())["op"] == summary["distributions"]["op"]
    assert (tmp_path / "v" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    again = validate(labels, tmp_path / "v", reference=ref)
    assert again["success"] and again["drift_checked"]


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (["0-9", "0-12"], "programs.max_layer"),  # layer outside [0, D)
        (["0-9", "0-4"], "programs.length"),  # 5 layers < 0.55 * 10
        (["0-9", "0-5,3-5,3-9"], "programs.max_visits"),  # layers 3-5 three times
    ],
)
def test_bad_programs_fail_and_name_the_column(tmp_path, bad, what):
    records = [*GOOD[:-1], {**GOOD[-1], "valid": bad}]
    with pytest.raises(ValidationFailed, match=what) as err:
        validate(_write(tmp_path / "labels", records), tmp_path / "v")
    assert "validation.html" in str(err.value)
    assert not json.loads((tmp_path / "v" / "validation.json").read_text())["success"]


def test_broken_compact_form_and_low_valid_share(tmp_path):
    records = [{**r, "valid": [], "shortest": None, "shortest_length": None, "compact": None} for r in GOOD]
    records[0] = {**GOOD[0], "compact": "keep(0-3) keep(4-9)"}  # 6-layer segment, and not the shortest
    with pytest.raises(ValidationFailed, match="records.has_valid.*records.compact_roundtrip"):
        validate(_write(tmp_path / "labels", records), tmp_path / "v", ValidateConfig(min_valid_share=0.5))


def test_drift_from_the_accepted_labels_fails(tmp_path):
    ref = tmp_path / "m.json"
    validate(_write(tmp_path / "a", GOOD), tmp_path / "v1", reference=ref)
    drifted = [_record(i, ["0-9", "0-1,0-9"]) for i in range(12)]  # every shortest program now loops
    with pytest.raises(ValidationFailed, match="kl_divergence"):
        validate(_write(tmp_path / "b", drifted), tmp_path / "v2", reference=ref)
    assert json.loads(ref.read_text())["op"].get("repeat", 0) < 0.5  # the reference was not replaced


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="polar label"):
        validate(tmp_path / "nothing", tmp_path / "v")
    folder = _write(tmp_path / "labels", GOOD)
    (folder / "labels.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match="labels.jsonl:1: broken record"):
        validate(folder, tmp_path / "v")


def test_cli_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from polar.cli import app

    good = _write(tmp_path / "good", GOOD)
    bad = _write(tmp_path / "bad", [*GOOD[:-1], {**GOOD[-1], "valid": ["0-12"]}])
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", "--labels", str(good), "--out", str(tmp_path / "v")])
    assert ok.exit_code == 0 and "labels valid" in ok.output
    failed = runner.invoke(app, ["validate", "--labels", str(bad), "--out", str(tmp_path / "v")])
    assert failed.exit_code == 1 and "max_layer" in failed.output


def _tasks(path, questions):
    import pandas as pd

    from polar.tasks.schema import Example

    rows = [Example(f"t/{i}", q, "1", "arith", "1", "s").to_dict() for i, q in enumerate(questions)]
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_held_out_questions_in_the_training_labels_stop_the_chain(tmp_path):
    labels = _write(tmp_path / "labels", GOOD)
    clean = _tasks(tmp_path / "test.parquet", ["What is 99 + 1?", "What is 98 + 1?"])
    summary = validate(labels, tmp_path / "v", heldout=[clean])
    assert summary["success"] and summary["heldout_checked"] == {str(clean): 2}
    assert summary["heldout_in_training"] == []
    # The same question, spaced and cased differently, is the same question.
    leaky = _tasks(tmp_path / "validation.parquet", ["What is 99 + 1?", "what is  3 + 1?"])
    with pytest.raises(ValidationFailed, match="heldout.in_training.*1 held-out questions are in the training labels"):
        validate(labels, tmp_path / "v", heldout=[clean, leaky])
    assert json.loads((tmp_path / "v" / "validation.json").read_text())["heldout_in_training"] == ["t/1"]


def test_the_validation_page_reads_offline(tmp_path):
    """validation.html loads nothing from elsewhere and holds every result as text (GX's index needs CDNs)."""
    import re
    from html.parser import HTMLParser

    labels = _write(tmp_path / "labels", [*GOOD[:-1], {**GOOD[-1], "valid": ["0-12"]}])
    with pytest.raises(ValidationFailed):
        validate(labels, tmp_path / "v", heldout=[_tasks(tmp_path / "t.parquet", ["What is 99 + 1?"])])
    page = (tmp_path / "v" / "validation.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no remote script, style or font
    assert "<script" not in page

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.links = [], []

        def handle_data(self, data):
            self.text.append(data)

        def handle_starttag(self, tag, attrs):
            self.links += [v for k, v in attrs if tag == "a" and k == "href"]

    parsed = Text()
    parsed.feed(page)
    text = " ".join(parsed.text)
    assert "FAILED" in text and "expect_column_values_to_be_between" in text and "max_layer" in text
    assert "none found in training" in text
    assert parsed.links and all((tmp_path / "v" / link).exists() for link in parsed.links)


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (the set-up installs Debian's chromium where it can)")
def test_the_validation_page_renders_in_a_headless_browser_offline(tmp_path):
    """What a user sees offline: the rendered page, in a real browser with no network, holds every result."""
    import subprocess

    labels = _write(tmp_path / "labels", GOOD)
    summary = validate(labels, tmp_path / "v", heldout=[_tasks(tmp_path / "t.parquet", ["What is 99 + 1?"])])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]

    def rendered(page):
        out = subprocess.run(
            [_chromium(), *flags, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    dom = rendered(tmp_path / "v" / "validation.html")
    assert "passed" in dom and "expect_column_values_to_be_in_set" in dom and "none found in training" in dom
    assert dom.count("<tr>") == 1 + sum(len(r) for r in summary["results"].values()) + len(summary["results"]) - 1


# ------------------------------------------------------------------------------------------ menu chains
MENU = ["0-9", "0-3,5-9", "0-7,6-9"]  # the full depth first, as the menu labeler writes it


def _menu_records(split: str, questions: list[str], programs: list[str], right) -> list:
    """Menu records as the menu labeler makes them: ``right(i, j)`` says whether program j answers input i."""
    from conftest import TEST_PROMPT

    from polar.labeling.folder import MenuRecord, MenuResult
    from polar.labeling.menu import menu_id
    from polar.tasks.prompts import PromptSpec

    menu, prompt = [Program.parse(p) for p in programs], PromptSpec.from_dict(TEST_PROMPT)
    records = []
    for i, question in enumerate(questions):
        results = tuple(
            MenuResult(
                p.text,
                right(i, j),
                str(i) if right(i, j) else None,
                len(p),
                round(-0.5 - 0.1 * j, 4),
                2,
                answer_logprob=round(-1.0 - 0.1 * j, 4),
                answer_tokens=2,
            )  # fmt: skip
            for j, p in enumerate(menu)
        )
        records.append(
            MenuRecord(
                id=f"{split}/{i}",
                task="arith",
                level=str(1 + i % 2),
                question=question,
                answer=str(i),
                answer_kind="number",
                model="m",
                depth=DEPTH,
                prompt=prompt.id,
                menu=menu_id(menu),
                results=results,
                base_logprob=-0.25,
                base_margin=0.5,
                base_entropy=1.5,
                sample_agreement=1.0,
                sample_correct=float(results[0].correct),
            )
        )
    return records


def _menu_folder(folder, split: str, questions: list[str], programs=MENU, right=lambda i, j: (i + j) % 2 == 0):
    """A menu folder as `polar label --menu` leaves it: shards merged into menu.jsonl, the matrices, settings.json."""
    from conftest import TEST_PROMPT

    from polar.labeling.folder import SCHEMA, MenuRecord, ShardWriter, check_settings, merge_shards
    from polar.labeling.menu import menu_id
    from polar.labeling.reward_matrix import export
    from polar.tasks.prompts import PromptSpec

    records = _menu_records(split, questions, programs, right)
    check_settings(
        folder,
        {
            "schema": SCHEMA,
            "kind": "menu",
            "model": "m",
            "tasks": f"data/tasks/{split}.parquet",
            "config": {"max_new_tokens": 8, "samples": 0, "temperature": 0.7},
            "prompt": PromptSpec.from_dict(TEST_PROMPT).to_dict(),
            "menu": {"id": menu_id([Program.parse(p) for p in programs]), "programs": list(programs)},
        },
    )
    writer = ShardWriter(folder, "0")
    for record in records:
        writer.write(record, 0.1)
    writer.close()
    export(merge_shards(folder, [r.id for r in records], MenuRecord))
    return folder


def _questions(split: str, n: int) -> list[str]:
    return [f"What is {i} + {len(split)}?" for i in range(n)]  # split names differ in length: disjoint questions


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The train, validation and test menu folders of one good chain (copy before changing one)."""
    root = tmp_path_factory.mktemp("chain")
    sizes = {"train": 12, "validation": 4, "test": 6}
    return {s: _menu_folder(root / s, s, _questions(s, n)) for s, n in sizes.items()}


def _copy(chain, tmp_path) -> dict:
    return {s: shutil.copytree(f, tmp_path / s) for s, f in chain.items()}


@pytest.fixture(scope="module")
def accepted(chain, tmp_path_factory):
    """The good chain validated once with a reference to write: (its summary, the reference file)."""
    from polar.validation import validate_menus

    ref = tmp_path_factory.mktemp("accepted") / "m-menu.json"
    return validate_menus(chain, ref.parent / "v", reference=ref, accept=True), ref


def test_a_good_menu_chain_passes_and_becomes_the_reference(chain, accepted, tmp_path):
    from typer.testing import CliRunner

    from polar.cli import app
    from polar.labeling.menu import menu_id

    summary, ref = accepted
    menu = menu_id([Program.parse(p) for p in MENU])
    assert summary["success"] and not summary["drift_checked"] and summary["menu"] == menu
    assert summary["inputs"] == {"train": 12, "validation": 4, "test": 6}
    assert {"train-rewards", "train-inputs", "test-rewards", "test-inputs", "splits"} <= set(summary["results"])
    assert json.loads((ref.parent / "v" / "validation.json").read_text()) == summary
    page = (ref.parent / "v" / "validation.html").read_text()
    assert "Menu validation" in page and "train 12, validation 4, test 6" in page
    assert 'passed</td><td class="ok">passed' not in page  # an expectation with nothing observed: one verdict cell
    written = json.loads(ref.read_text())
    assert written["menu"] == menu and written["split"] == "train"
    assert written["right_program"] == pytest.approx({"0-9": 1 / 3, "0-3,5-9": 1 / 3, "0-7,6-9": 1 / 3})
    assert written["base_accuracy"] == {"1": {"right": 1.0}, "2": {"wrong": 1.0}}  # even inputs are level 1
    # Again, from the command line: now against the reference.
    shutil.copy(ref, tmp_path / "ref.json")
    menus = [a for s, f in chain.items() for a in ("--menu", f"{s}={f}")]
    ok = CliRunner().invoke(
        app, ["validate", *menus, "--reference", str(tmp_path / "ref.json"), "--out", str(tmp_path)]
    )
    assert ok.exit_code == 0 and "menu folders valid" in ok.output and "train 12" in ok.output, ok.output
    again = json.loads((tmp_path / "validation.json").read_text())
    assert again["drift_checked"] and "drift-levels" in again["results"] and "drift-programs" in again["results"]


def _duplicate_row(folders):
    import pandas as pd

    path = folders["validation"] / "rewards.parquet"
    rewards = pd.read_parquet(path)
    pd.concat([rewards, rewards.iloc[[4]]]).to_parquet(path, index=False)


def _drop_identity(folders):
    import pandas as pd

    path = folders["test"] / "rewards.parquet"
    rewards = pd.read_parquet(path)
    rewards[~((rewards["id"] == "test/3") & (rewards["program"] == "0-9"))].to_parquet(path, index=False)


def _half_choices(folders):
    import pandas as pd

    path = folders["train"] / "rewards.parquet"
    rewards = pd.read_parquet(path)
    rewards["choice_logprobs"] = [[-1.0, -2.0]] * len(rewards)  # the choices' sums without their token counts
    rewards.to_parquet(path, index=False)


def _share_question(folders):
    shutil.rmtree(folders["validation"])
    questions = ["What is 3 +  5?", *_questions("validation", 4)[1:]]  # train's "What is 3 + 5?", spaced anew
    _menu_folder(folders["validation"], "validation", questions)


def _other_menu(folders):
    shutil.rmtree(folders["test"])
    _menu_folder(folders["test"], "test", _questions("test", 6), programs=["0-9", "0-2,4-9"])


def _other_dtype(folders):
    path = folders["test"] / "settings.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "engine": {"dtype": "bfloat16", "device": "cuda"}}))


@pytest.mark.parametrize(
    ("spoil", "what"),
    [
        (_duplicate_row, r"validation-rewards\.id,program: expect_compound_columns_to_be_unique"),
        (
            _drop_identity,
            r"test-inputs\.identity_rows: expect_column_values_to_be_in_set \(\{'identity_rows': 0, 'id': 'test/3'\}",
        ),
        (_share_question, r"question 'What is 3 \+  5\?' is in validation and in train"),
        (_half_choices, r"train-rewards: expect_table_columns_to_match_set"),
        (_other_menu, r"splits\.menu: expect_column_values_to_be_in_set \(\{'menu': 'menu-2-\w+', 'split': 'test'\}"),
        (_other_dtype, r"splits\.numerics: expect_column_values_to_be_in_set \(\{'numerics': 'bfloat16 on cuda'"),
    ],
    ids=["duplicate-row", "no-identity-row", "shared-question", "half-choices", "other-menu", "other-dtype"],
)
def test_a_spoilt_menu_chain_fails_and_names_the_problem(chain, tmp_path, spoil, what):
    from polar.validation import validate_menus

    folders = _copy(chain, tmp_path)
    spoil(folders)
    ref = tmp_path / "m-menu.json"
    with pytest.raises(ValidationFailed, match=what) as err:
        validate_menus(folders, tmp_path / "v", reference=ref, accept=True)
    assert "validation.html" in str(err.value) and not ref.exists()
    assert not json.loads((tmp_path / "v" / "validation.json").read_text())["success"]


def test_menu_drift_fails_and_a_reference_of_another_menu_is_replaced(chain, accepted, tmp_path):
    from polar.validation import validate_menus

    ref = shutil.copy(accepted[1], tmp_path / "m-menu.json")
    before = ref.read_text()
    folders = _copy(chain, tmp_path)
    shutil.rmtree(folders["train"])  # the same questions, but only the last program is ever right
    _menu_folder(folders["train"], "train", _questions("train", 12), right=lambda _, j: j == 2)
    with pytest.raises(ValidationFailed, match=r"drift-programs\.program: expect_column_kl_divergence") as err:
        validate_menus(folders, tmp_path / "v2", reference=ref)
    assert "drift-levels.level 1: expect_column_kl_divergence" in str(err.value)
    assert ref.read_text() == before  # a failing run leaves the reference as it was

    ref.write_text(json.dumps({**json.loads(before), "menu": "menu-2-000000000000"}))
    summary = validate_menus(folders, tmp_path / "v3", reference=ref)
    assert summary["success"] and not summary["drift_checked"]
    assert "menu-2-000000000000" in summary["reference"] and "replaces it" in summary["reference"]
    assert json.loads(ref.read_text())["menu"] == summary["menu"]


def test_menu_folder_files_that_are_missing_or_not_parquet(chain, tmp_path):
    from polar.validation import validate_menus

    folders = _copy(chain, tmp_path)
    (folders["test"] / "rewards.parquet").write_text("id,program\n")
    with pytest.raises(ValueError, match=r"test/rewards\.parquet is not a Parquet file \(expected rewards\.parquet "):
        validate_menus(folders, tmp_path / "v")
    shutil.copy(chain["test"] / "rewards.parquet", folders["test"])
    (folders["test"] / "inputs.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"test/inputs\.parquet not found \(expected inputs\.parquet "):
        validate_menus({"test": folders["test"]}, tmp_path / "v")
    labels = _write(tmp_path / "labels", GOOD)
    with pytest.raises(ValueError, match="not a menu folder's"):
        validate_menus({"train": labels}, tmp_path / "v")
    with pytest.raises(ValueError, match="split name 'train/a'"):
        validate_menus({"train/a": chain["train"]}, tmp_path / "v")


def test_cli_menu_mode_errors(chain, tmp_path):
    from typer.testing import CliRunner

    from polar.cli import app

    runner = CliRunner()
    menus = [a for s, f in chain.items() for a in ("--menu", f"{s}={f}")]
    neither = runner.invoke(app, ["validate", "--out", str(tmp_path / "v")])
    assert neither.exit_code == 2 and "neither --labels nor --menu" in neither.output
    both = runner.invoke(app, ["validate", "--labels", "x", *menus, "--out", str(tmp_path / "v")])
    assert both.exit_code == 2 and "both --labels and --menu" in both.output
    bad = runner.invoke(app, ["validate", "--menu", "train", "--out", str(tmp_path / "v")])
    assert bad.exit_code == 2 and "write SPLIT=FOLDER" in bad.output
    twice = runner.invoke(app, ["validate", *menus, "--menu", f"test={chain['test']}", "--out", str(tmp_path / "v")])
    assert twice.exit_code == 2 and "names the split 'test' twice" in twice.output
    assert not (tmp_path / "v").exists()  # refused before anything ran
