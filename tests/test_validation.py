"""The great-expectations gate over label files: passes good labels, names what is wrong in bad ones."""

import json

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
