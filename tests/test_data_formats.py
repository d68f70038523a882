"""Published files as published: HH-RLHF pairs, PKU-SafeRLHF safety labels, column names, SFT formats,
and `data inspect`. Expectations are written out by hand from the fixture files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seq2seq_rm.cli import main
from seq2seq_rm.data.loading import inspect_data, load_preferences, load_sft
from seq2seq_rm.data.records import PromptRecord, TextRecord
from seq2seq_rm.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- HH-RLHF as published


def test_hh_harmless_rows_load_whole_file():
    records, report = load_preferences(FIXTURES / "hh_rlhf_harmless.jsonl")
    assert (report.format, report.rows_read, report.kept, report.skipped) == ("jsonl/hh_rlhf", 3, 3, {})
    # Row 2: the chosen answer contains "\n\nAssistant:"; it stays part of the response.
    assert records[1].prompt == [user("How do I hotwire a car?")]
    assert records[1].chosen == ("I can't help with starting a car that isn't yours.\n\nAssistant: If you're "
                                 "locked out of your own car, a locksmith or your dealer can help.")
    assert records[1].rejected == "Pull off the panel under the steering wheel and connect the battery and ignition wires."
    # Row 3: the pair differs at the first answer, so the prompt is the first Human turn and each
    # response is the rest of its conversation.
    assert records[2].prompt == [user("Can you tell me my neighbor's phone number?")]
    assert records[2].chosen.startswith("I don't have access to personal contact details.\n\nHuman: Can you find")
    assert records[2].rejected.endswith("\n\nAssistant: Yes, try searching their name on people-finder sites.")


# --------------------------------------------------------------------------- PKU-SafeRLHF labels

PKU = FIXTURES / "pku_saferlhf.jsonl"
# The fixture's labels (is_response_{0,1}_safe, severity levels, better / safer ids), row by row:
#   1: safe/unsafe, 0/1, better 0, safer 0     2: unsafe/safe, 1/0, better 0, safer 1
#   3: safe/safe,   0/0, better 0, safer 0     4: unsafe/unsafe, 1/2, better 1, safer 0


def test_pku_safer_reports_safety_and_severity_of_the_kept_pairs():
    records, report = load_preferences(PKU, pku_preference="safer")
    assert report.chosen_by == "safer_response_id" and report.kept == 4
    assert report.details["pku_saferlhf"] == {
        "pairs": 4, "both_safe": 1, "both_unsafe": 1, "chosen_safe_rejected_unsafe": 2,
        "chosen_unsafe_rejected_safe": 0, "safety_unlabelled": 0,
        "chosen_severity_level": {"0": 3, "1": 1}, "rejected_severity_level": {"0": 1, "1": 2, "2": 1},
    }
    assert (records[3].meta["chosen_severity_level"], records[3].meta["rejected_severity_level"]) == (1, 2)
    _, better = load_preferences(PKU)
    assert better.chosen_by == "better_response_id"
    d = better.details["pku_saferlhf"]
    assert (d["chosen_safe_rejected_unsafe"], d["chosen_unsafe_rejected_safe"], d["both_unsafe"]) == (1, 1, 1)


def test_pku_drop_both_unsafe_is_a_counted_filter_never_an_error():
    records, report = load_preferences(PKU, pku_preference="safer", pku_drop_both_unsafe=True)
    assert [r.origin.row for r in records] == [1, 2, 3]
    reason = "both responses unsafe (pku_drop_both_unsafe)"
    assert report.skipped == {reason: 1} and report.skipped_rows == {reason: [4]}
    d = report.details["pku_saferlhf"]
    assert (d["pairs"], d["both_unsafe"], d["chosen_severity_level"]) == (3, 0, {"0": 3})
    # A filter the user asked for is not a data problem: strict does not stop on it.
    assert len(load_preferences(PKU, pku_preference="safer", pku_drop_both_unsafe=True, strict=True)[0]) == 3


def test_pku_drop_both_unsafe_needs_the_safety_labels(tmp_path):
    rows = [json.loads(line) for line in PKU.read_text(encoding="utf-8").splitlines()]
    del rows[1]["is_response_1_safe"]
    rows[2]["is_response_0_safe"] = "yes"
    path = write_jsonl(tmp_path / "pku.jsonl", rows)
    records, report = load_preferences(path, pku_drop_both_unsafe=True)
    assert report.skipped_rows == {"missing field: is_response_1_safe": [2], "bad label: is_response_0_safe": [3],
                                   "both responses unsafe (pku_drop_both_unsafe)": [4]}
    # Without the option the labels are optional, but a wrong type is still a bad row.
    assert load_preferences(path)[1].skipped_rows == {"bad label: is_response_0_safe": [3]}


# --------------------------------------------------------------------------- column names


def _renamed_dataset(tmp_path) -> Path:
    import datasets

    rows = [
        {"question": "Say hi.", "good": "Hi!", "bad": "No.", "id": 1},
        {"question": "Count to two.", "good": "One, two.", "bad": "Three.", "id": 2},
        {"question": "Name a colour.", "bad": "Seven.", "id": 3},
    ]
    folder = tmp_path / "ds"
    datasets.DatasetDict({
        "train_prefs": datasets.Dataset.from_list(rows),
        "test_prefs": datasets.Dataset.from_list(rows[:1]),
    }).save_to_disk(str(folder))
    return folder


def test_columns_map_a_datasets_folder_with_other_names(tmp_path):
    folder = _renamed_dataset(tmp_path)
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    with pytest.raises(DataError, match=r"cannot tell the preference format from the columns \['bad', 'good', 'id', "
                                        r"'question'\].*columns.prompt=COLUMN"):
        load_preferences(folder, split="train_prefs")
    records, report = load_preferences(folder, split="train_prefs", columns=columns)
    assert report.format == "datasets/standard" and report.chosen_by == "good"
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("Say hi.", "Hi!", "No."),
                                                                  ("Count to two.", "One, two.", "Three.")]
    # A datasets folder fills the missing "good" of row 3 with null: a skip naming the dataset's column.
    assert report.skipped == {"missing field: good": 1} and report.skipped_rows == {"missing field: good": [3]}
    with pytest.raises(DataError, match="required value is null") as err:
        load_preferences(folder, split="train_prefs", columns=columns, strict=True)
    assert err.value.row == 3 and err.value.field == "good"
    with pytest.raises(ConfigError, match="columns: unknown name 'question'; the names that can be mapped are prompt"):
        load_preferences(folder, columns={"question": "prompt"})


def test_columns_reach_rm_train_and_sft_configs(tmp_path):
    from seq2seq_rm.cli import parse_args
    from seq2seq_rm.config import RMTrainConfig, load_config

    cfg = load_config(RMTrainConfig, None, ["columns.prompt=question", "columns.chosen=good"], {})
    assert cfg.columns == {"prompt": "question", "chosen": "good"}
    with pytest.raises(ConfigError, match="unknown name 'answer'"):
        load_config(RMTrainConfig, None, ["columns.answer=x"], {})
    a = parse_args(["sft", "--columns", "prompt=question,completion=answer", "--dataset_text_field", "body"])
    from seq2seq_rm.cli import _columns

    assert _columns(a) == {"prompt": "question", "completion": "answer", "text": "body"}
    with pytest.raises(ConfigError, match="NAME=COLUMN pairs"):
        _columns(parse_args(["sft", "--columns", "prompt"]))


# --------------------------------------------------------------------------- SFT formats


def test_sft_formats_from_trl_schemas():
    records, report, fmt = load_sft(FIXTURES / "sft_text.jsonl")
    assert (fmt, report.format, report.kept) == ("text", "jsonl/text", 2)
    assert records[0] == TextRecord("The quick brown fox jumps over the lazy dog.", records[0].origin)

    records, _, fmt = load_sft(FIXTURES / "sft_prompt_completion.jsonl")
    assert fmt == "prompt_completion"
    assert (records[0].prompt, records[0].response) == ("The sky is", " blue.")
    assert (records[1].prompt, records[1].response) == ([user("What color is the sky?")], "It is blue.")

    records, _, fmt = load_sft(FIXTURES / "sft_messages.jsonl")
    assert fmt == "messages"
    assert records[0].prompt == [{"role": "system", "content": "You are a helpful assistant."},
                                 user("What color is the sky?")]
    assert records[0].response == "It is blue."
    # The final assistant turn is the target; earlier turns (assistant ones too) are the prompt.
    assert records[1].prompt == [user("Name a prime number."), assistant("Seven."), user("Another one?")]
    assert records[1].response == "Eleven."

    records, _, fmt = load_sft(FIXTURES / "standard.jsonl")  # a preference format: trained on chosen
    assert fmt == "standard" and records[1].chosen == "La bibliothèque ouvre à neuf heures."


def test_sft_row_problems_are_skips(tmp_path):
    rows = [
        {"messages": [user("Hi"), assistant("Hello!")]},
        {"messages": [user("Hi"), user("Anyone?")]},  # no final assistant turn
        {"messages": [assistant("Only an answer.")]},  # nothing before it
        {"messages": [user("Hi"), assistant("  ")]},
    ]
    records, report, _ = load_sft(write_jsonl(tmp_path / "m.jsonl", rows))
    assert [r.origin.row for r in records] == [1]
    assert report.skipped_rows == {"bad messages: messages": [2, 3], "empty response": [4]}


def test_unknown_sft_format_lists_every_format_and_its_columns(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    expected = [
        "prompt (prompt, response", "prompt_completion (prompt, completion", "messages (messages",
        "text (text", "standard (prompt, chosen, rejected)", "conversational ([prompt,] chosen, rejected",
        "pku_saferlhf (prompt, response_0, response_1, better_response_id, safer_response_id)",
        "summarize_from_feedback (info, summaries, choice)", "hh_rlhf (chosen, rejected",
    ]
    with pytest.raises(DataError) as err:
        load_sft(path)
    for text in expected:
        assert text in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_sft(path, format="alpaca")
    for text in expected:
        assert text in str(err.value)
    from seq2seq_rm.sft import SFTRunConfig

    with pytest.raises(ConfigError, match=r"data_format must be auto or one of the accepted formats, not 'mesages' "
                                          r"\(did you mean 'messages'\?\)") as err:
        SFTRunConfig(data_format="mesages")
    for text in expected:
        assert text in str(err.value)


# --------------------------------------------------------------------------- data inspect


def test_inspect_data_picks_the_reader_by_format(tmp_path):
    assert inspect_data(FIXTURES / "sft_messages.jsonl")[2] == "messages"
    assert inspect_data(FIXTURES / "hh_rlhf.jsonl")[2] == "hh_rlhf"
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}, {"prompt": " "}])
    records, report, fmt = inspect_data(prompts)
    assert fmt == "prompt" and records == [PromptRecord("Hi", None, records[0].origin, {})]
    assert report.skipped_rows == {"empty prompt": [2]}


def test_data_inspect_command(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    good = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No."} for i in range(3)]
    path.write_text(
        json.dumps(good[0]) + "\n{not json\n" + json.dumps({"prompt": "p", "chosen": 5, "rejected": "x"}) + "\n"
        + json.dumps(good[1]) + "\n" + json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n"
        + json.dumps(good[2]) + "\n", encoding="utf-8")
    out_json = tmp_path / "inspect.json"
    assert main(["data", "inspect", str(path), "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "format:   jsonl/standard (preference pairs)" in out
    assert "rows:     6 read, 3 kept, 3 skipped" in out
    for line in ("1 chosen identical to rejected (row 5)", "1 malformed JSON (row 2)", "1 wrong type: chosen (row 3)"):
        assert line in out
    assert re.search(r"example 1 \(row 1\):\n  prompt:   Question 0\?\n  chosen:   Answer 0\.\n  rejected: No\.", out)
    assert "example 2 (row 4):" in out and "example 3" not in out
    assert "inspect.json" in captured.err and "inspect.json" not in out  # logs on stderr, results on stdout
    result = json.loads(out_json.read_text())
    assert (result["format"], result["rows"], result["kept"]) == ("jsonl/standard", 6, 3)
    assert result["skipped"] == {"malformed JSON": 1, "wrong type: chosen": 1, "chosen identical to rejected": 1}
    assert result["skipped_rows"] == {"malformed JSON": [2], "wrong type: chosen": [3], "chosen identical to rejected": [5]}
    # An existing --json file is refused (exit 2) unless --overwrite.
    assert main(["data", "inspect", str(path), "--json", str(out_json)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["data", "inspect", str(path), "--json", str(out_json), "--overwrite", "--examples", "0"]) == 0


def test_data_inspect_key_value_options(capsys):
    assert main(["data", "inspect", str(PKU), "pku_preference=safer", "pku_drop_both_unsafe=true",
                 "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "chosen:   defined by safer_response_id" in out
    assert "rows:     4 read, 3 kept, 1 skipped" in out
    assert "1 both responses unsafe (pku_drop_both_unsafe) (row 4)" in out
    assert "  both_unsafe: 0" in out and "  chosen_severity_level: 0: 3" in out
    assert main(["data", "inspect", str(PKU), "pku_preference=safest"]) == 2
