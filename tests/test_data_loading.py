"""Loading preference and prompt data: containers, public-schema adapters, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seq2seq_rm.data.loading import load_preferences, load_prompts, read_rows
from seq2seq_rm.data.records import Origin, PreferenceRecord, PromptRecord
from seq2seq_rm.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
FIXTURE_FORMATS = {
    "standard.jsonl": "standard",
    "conversational.jsonl": "conversational",
    "conversational_implicit.jsonl": "conversational",
    "pku_saferlhf.jsonl": "pku_saferlhf",
    "summarize_comparisons.jsonl": "summarize_from_feedback",
    "hh_rlhf.jsonl": "hh_rlhf",
}


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def assert_where(err: pytest.ExceptionInfo, file: Path | str, row: int | None, field: str | None) -> None:
    """The error names the file, the row and the field, in DataError's format."""
    text = str(err.value)
    assert Path(file).name in text
    if row is not None:
        assert f"row {row}" in text
        assert err.value.row == row
    if field is not None:
        assert f"field '{field}'" in text
        assert err.value.field == field


# --------------------------------------------------------------------------- adapters


def test_standard_records_and_report():
    path = FIXTURES / "standard.jsonl"
    records, report = load_preferences(path)
    assert records[1] == PreferenceRecord(
        "Translate to French: The library opens at nine.",
        "La bibliothèque ouvre à neuf heures.",
        "Le livre ouvre à neuf.",
        Origin(str(path), 2),
    )
    # Responses are kept as written; only emptiness is checked.
    assert records[2].chosen == "  Rise & Crumb  "
    assert (report.source, report.rows_read, report.kept, report.skipped, report.format) == (
        str(path),
        3,
        3,
        {},
        "jsonl/standard",
    )


def test_conversational_explicit_prompt_stays_a_message_list():
    records, report = load_preferences(FIXTURES / "conversational.jsonl")
    assert report.format == "jsonl/conversational"
    assert records[1].prompt == [
        {"role": "system", "content": "You are a concise assistant."},
        user("Name three primary colors."),
    ]
    assert records[1].chosen == "Red, blue and yellow."
    assert records[1].rejected == "Red, green, purple, orange and many more."
    assert records[2].chosen == "No: 91 = 7 × 13."


def test_conversational_implicit_prompt_is_the_shared_prefix():
    records, _ = load_preferences(FIXTURES / "conversational_implicit.jsonl")
    assert records[0].prompt == [user("What's a good stretch for a stiff neck?")]
    assert records[0].rejected == "Crack it."
    assert records[1].prompt == [
        user("Recommend a sci-fi novel."),
        assistant("Have you read The Left Hand of Darkness?"),
        user("Yes, I loved it. Something similar?"),
    ]
    assert records[1].chosen == "Try The Dispossessed, also by Ursula K. Le Guin."
    assert records[1].rejected == "Read the same book again."


def test_conversational_messages_before_the_answer_join_the_prompt(tmp_path):
    tool_call = [assistant("Let me check the weather."), {"role": "tool", "content": "18 °C, sunny"}]
    row = {
        "prompt": [user("Weather in Lyon?")],
        "chosen": tool_call + [assistant("It is 18 °C and sunny.")],
        "rejected": tool_call + [assistant("It is raining.")],
    }
    records, _ = load_preferences(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert records[0].prompt == [user("Weather in Lyon?")] + tool_call
    assert (records[0].chosen, records[0].rejected) == ("It is 18 °C and sunny.", "It is raining.")

    row["rejected"] = [assistant("Let me look.")] + tool_call[1:] + [assistant("It is raining.")]
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError, match="differ before their final assistant") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 1, "rejected")
    with pytest.raises(DataError, match=r"all skipped \(1 chosen and rejected contexts differ: rejected \(row 1\)\)"):
        load_preferences(path)


def test_conversational_prompt_repeated_in_chosen_is_not_doubled(tmp_path):
    # The shape of HuggingFaceH4/ultrafeedback_binarized: a string prompt, full conversations.
    q = "How many legs does a spider have?"
    row = {
        "prompt": q,
        "prompt_id": "9f2c",
        "chosen": [user(q), assistant("Eight.")],
        "rejected": [user(q), assistant("Six.")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    list_row = {**row, "prompt": [user(q)]}
    records, _ = load_preferences(write_jsonl(tmp_path / "uf.jsonl", [row, list_row]))
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
        (q, "Eight.", "Six."),
        ([user(q)], "Eight.", "Six."),
    ]


def test_pku_better_and_safer_pick_different_sides():
    path = FIXTURES / "pku_saferlhf.jsonl"
    better, report = load_preferences(path)
    safer, _ = load_preferences(path, pku_preference="safer")
    assert report.format == "jsonl/pku_saferlhf"
    raw = fixture_rows("pku_saferlhf.jsonl")[1]  # better_response_id 0, safer_response_id 1
    assert (better[1].chosen, better[1].rejected) == (raw["response_0"], raw["response_1"])
    assert (safer[1].chosen, safer[1].rejected) == (raw["response_1"], raw["response_0"])
    assert better[1].prompt == safer[1].prompt == raw["prompt"]
    # Row 1 has the same id for both: the same pair either way.
    assert (better[0].chosen, better[0].rejected) == (safer[0].chosen, safer[0].rejected)
    meta = safer[1].meta
    assert meta["chosen_id"] == 1 and meta["chosen_is_safe"] is True and meta["rejected_is_safe"] is False
    assert (
        meta["is_response_0_safe"] is False and meta["response_0_harm_category"]["Privacy Violation"] is True
    )
    assert meta["response_0_severity_level"] == 1 and "response_0" not in meta


def test_summarize_from_feedback_prompt_template_and_choice():
    records, report = load_preferences(FIXTURES / "summarize_comparisons.jsonl")
    raw = fixture_rows("summarize_comparisons.jsonl")
    assert report.format == "jsonl/summarize_from_feedback"
    assert records[0].prompt == (
        "SUBREDDIT: r/relationships\n"
        "TITLE: Boyfriend wants to split bills 50/50 even though he earns twice as much\n"
        f"POST: {raw[0]['info']['post']}\nTL;DR:"
    )
    assert records[0].chosen == raw[0]["summaries"][0]["text"].strip()
    assert records[0].rejected == "my boyfriend and I split bills and I don't like it."
    # choice 1, and the chosen summary loses its leading space and trailing newline.
    assert records[1].chosen.startswith("Finished my first 10k") and records[1].chosen.endswith("12 km?")
    assert records[1].rejected == "Ran my first 10k. Want to run a half."
    assert records[2].prompt == f"ARTICLE: {raw[2]['info']['article']}\nTL;DR:"
    assert records[2].rejected == "A dog was lost."
    assert records[0].meta["id"] == "t3_3dq7xh"
    assert records[0].meta["worker"] == "KZL1qdlOsZ8cmwyCmmYWhqbHGmYAq6"
    assert records[0].meta["confidence"] == 8
    assert records[2].meta["site"] == "dailymail"


def test_hh_rlhf_multi_turn_prompt_messages():
    records, report = load_preferences(FIXTURES / "hh_rlhf.jsonl")
    assert report.format == "jsonl/hh_rlhf"
    assert records[0].prompt == [user("What are some good vegetables to grow on a balcony?")]
    assert records[0].rejected == "Potatoes."
    assert records[1].prompt == [
        user("I want to start journaling. Any advice?"),
        assistant("Start small: five minutes a day is plenty. Do you prefer writing by hand or typing?"),
        user("By hand, I think. What should I write about?"),
    ]
    assert records[1].chosen == (
        "Try writing three things that happened today and one thing you're looking forward to. "
        "Prompts like that make it easier to begin."
    )
    assert records[1].rejected == "Whatever you want."


def test_hh_rlhf_pairs_that_differ_earlier_keep_the_rest_as_responses(tmp_path):
    # Read as published: the prompt ends at the last Assistant marker before the first difference.
    rows = fixture_rows("hh_rlhf.jsonl")
    rows[1]["rejected"] = rows[1]["rejected"].replace("By hand", "Typing")
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    records, report = load_preferences(path)
    assert report.kept == 3 and report.skipped == {}
    assert records[1].prompt == [user("I want to start journaling. Any advice?")]
    assert records[1].chosen == (
        "Start small: five minutes a day is plenty. Do you prefer writing by hand or typing?"
        "\n\nHuman: By hand, I think. What should I write about?\n\nAssistant: Try writing three things that "
        "happened today and one thing you're looking forward to. Prompts like that make it easier to begin."
    )
    assert records[1].rejected == (
        "Start small: five minutes a day is plenty. Do you prefer writing by hand or typing?"
        "\n\nHuman: Typing, I think. What should I write about?\n\nAssistant: Whatever you want."
    )


def test_hh_rlhf_answer_containing_an_assistant_marker(tmp_path):
    # The shape of the rows that made the whole harmless-base test split fail: the chosen answer
    # itself holds "\n\nAssistant:". Splitting each transcript at its own last marker gave two
    # different prompts; the pair is read at the marker before their first difference instead.
    q = "\n\nHuman: How do I pick a lock?"
    row = {"chosen": q + "\n\nAssistant: I'd rather not help with that.\n\nAssistant: Is it your own lock?",
           "rejected": q + "\n\nAssistant: Use a tension wrench and a pick."}
    bad = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Yo\n\nAssistant: Hello"}
    # An answer that starts the same way on both sides and then holds a marker: the prompt must
    # still end after the Human turn, not inside the answer.
    nested = {"chosen": q + "\n\nAssistant: Sure.\n\nAssistant: Why?", "rejected": q + "\n\nAssistant: Sure.\n\nAssistant: No."}
    path = write_jsonl(tmp_path / "hh.jsonl", [row, bad, nested])
    records, report = load_preferences(path)
    assert report.format == "jsonl/hh_rlhf" and report.kept == 2
    assert records[0].prompt == [user("How do I pick a lock?")]
    assert records[0].chosen == "I'd rather not help with that.\n\nAssistant: Is it your own lock?"
    assert records[0].rejected == "Use a tension wrench and a pick."
    assert (records[1].prompt, records[1].chosen, records[1].rejected) == (
        [user("How do I pick a lock?")], "Sure.\n\nAssistant: Why?", "Sure.\n\nAssistant: No.")
    # The pair that differs in its first Human turn shares no prompt: a counted skip, not an error.
    assert report.skipped == {"unsplittable transcript: rejected": 1}
    assert report.skipped_rows == {"unsplittable transcript: rejected": [2]}
    with pytest.raises(DataError, match="share no prompt") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 2, "rejected")


def test_explicit_format_and_unknown_format(tmp_path):
    records, report = load_preferences(FIXTURES / "hh_rlhf.jsonl", format="hh_rlhf")
    assert len(records) == 3 and report.format == "jsonl/hh_rlhf"
    with pytest.raises(ConfigError, match="unknown preference format 'alpaca'"):
        load_preferences(FIXTURES / "hh_rlhf.jsonl", format="alpaca")
    with pytest.raises(ConfigError, match="pku_preference"):
        load_preferences(FIXTURES / "pku_saferlhf.jsonl", pku_preference="helpful")


def test_undetectable_format_lists_keys_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert_where(err, path, 1, None)
    assert "['answer', 'question']" in str(err.value)
    for name in ("pku_saferlhf", "summarize_from_feedback", "hh_rlhf", "conversational", "standard"):
        assert name in str(err.value)


# --------------------------------------------------------------------------- row problems


def _pku(**changes) -> dict:
    row = dict(fixture_rows("pku_saferlhf.jsonl")[0])
    row.update(changes)
    return {k: v for k, v in row.items() if v is not DROP}


def _summ(**changes) -> dict:
    row = json.loads(json.dumps(fixture_rows("summarize_comparisons.jsonl")[0]))
    row.update(changes)
    return row


DROP = object()
GOOD = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
CONV = {"prompt": [user("Hi")], "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")]}

ROW_PROBLEMS = {
    "missing column": (
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        {"rejected": DROP},
        "standard",
        "rejected",
        "missing required column 'rejected'",
    ),
    "chosen is a number": (GOOD, {"chosen": 3}, "standard", "chosen", "expected a string, got int"),
    "prompt is a number": (GOOD, {"prompt": 7}, "standard", "prompt", "expected a string or a list"),
    "message missing content": (
        CONV,
        {"chosen": [{"role": "assistant"}]},
        "conversational",
        "chosen",
        "message 0: missing 'content'",
    ),
    "bad role": (
        CONV,
        {"prompt": [{"role": "human", "content": "Hi"}]},
        "conversational",
        "prompt",
        "role 'human' is not one of",
    ),
    "final message not assistant": (
        CONV,
        {"rejected": [user("Hmm")]},
        "conversational",
        "rejected",
        "must have role 'assistant'",
    ),
    "bad better_response_id": (
        _pku(),
        {"better_response_id": 2},
        "pku_saferlhf",
        "better_response_id",
        "expected 0 or 1, got 2",
    ),
    "bool better_response_id": (
        _pku(),
        {"better_response_id": True},
        "pku_saferlhf",
        "better_response_id",
        "expected 0 or 1",
    ),
    "pku missing response_1": (
        _pku(),
        {"response_1": DROP},
        "pku_saferlhf",
        "response_1",
        "missing required column",
    ),
    "choice out of range": (
        _summ(),
        {"choice": 2},
        "summarize_from_feedback",
        "choice",
        "expected 0 or 1 (an index into 'summaries'), got 2",
    ),
    "summary text missing": (
        _summ(),
        {"summaries": [{"text": "a"}, {"policy": "x"}]},
        "summarize_from_feedback",
        "summaries[1].text",
        "missing required column 'text'",
    ),
    "three summaries": (
        _summ(),
        {"summaries": [{"text": "a"}] * 3},
        "summarize_from_feedback",
        "summaries",
        "expected a list of 2 summaries, got 3 items",
    ),
    "hh differs before any assistant turn": (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Bye"},
        {"rejected": "\n\nHuman: Yo\n\nAssistant: Bye"},
        "hh_rlhf",
        "rejected",
        "share no prompt",
    ),
    "hh text before the first turn": (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Bye"},
        {"chosen": "Hi\n\nAssistant: Hello", "rejected": "Hi\n\nAssistant: Bye"},
        "hh_rlhf",
        "chosen",
        "text before the first",
    ),
}
# The reason each row problem is counted under ("kind: field"), computed by hand from the table.
REASONS = {
    "missing column": "missing field: rejected",
    "chosen is a number": "wrong type: chosen",
    "prompt is a number": "wrong type: prompt",
    "message missing content": "bad messages: chosen",
    "bad role": "bad messages: prompt",
    "final message not assistant": "bad messages: rejected",
    "bad better_response_id": "bad label: better_response_id",
    "bool better_response_id": "bad label: better_response_id",
    "pku missing response_1": "missing field: response_1",
    "choice out of range": "bad label: choice",
    "summary text missing": "missing field: summaries[1].text",
    "three summaries": "wrong type: summaries",
    "hh differs before any assistant turn": "unsplittable transcript: rejected",
    "hh text before the first turn": "unsplittable transcript: chosen",
}


@pytest.mark.parametrize("case", sorted(ROW_PROBLEMS))
def test_row_problems_are_counted_skips_and_strict_errors(tmp_path, case):
    base, changes, fmt, field, message = ROW_PROBLEMS[case]
    bad = {k: v for k, v in {**base, **changes}.items() if v is not DROP}
    # The bad row is the third line, after a good row and a blank line (line numbers count).
    path = tmp_path / f"{case.replace(' ', '_')}.jsonl"
    path.write_text(json.dumps(base) + "\n\n" + json.dumps(bad) + "\n" + json.dumps(base) + "\n", encoding="utf-8")
    records, report = load_preferences(path, format=fmt)
    assert [r.origin.row for r in records] == [1, 4]
    assert (report.rows_read, report.kept) == (3, 2)
    assert report.skipped == {REASONS[case]: 1} and report.skipped_rows == {REASONS[case]: [3]}
    example = report.skip_examples[REASONS[case]]
    assert f"{path}, row 3, field '{field}': " in example and message in example
    assert f"skipped 1 {REASONS[case]} (row 3)" in report.summary()
    # strict: the same problem stops the load, naming file, row and field.
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_preferences(path, format=fmt, strict=True)
    assert_where(err, path, 3, field)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(
        good
        + b"\n"
        + good
        + b"\n"
        + '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}'.encode("latin-1")
        + b"\n"
    )
    offset = 2 * (len(good) + 1) + len(b'{"prompt": "caf')  # two good lines, then up to the bad byte
    records, report = load_preferences(path)
    assert len(records) == 2 and report.skipped == {"not valid UTF-8": 1} and report.skipped_rows == {"not valid UTF-8": [3]}
    assert f"byte offset {offset} (column 16 of the line)" in report.skip_examples["not valid UTF-8"]
    with pytest.raises(DataError, match="not valid UTF-8 at byte offset") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 3, None)
    assert f"byte offset {offset} (column 16 of the line)" in str(err.value)
    # A file whose lines are all undecodable (e.g. UTF-16) has no usable rows: an error.
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes(json.dumps(GOOD).encode("utf-16") + b"\n")
    with pytest.raises(DataError, match=r"no usable rows .* all skipped \(1 not valid UTF-8 \(row 1\)\)"):
        load_preferences(utf16)


def test_malformed_json_and_non_object_lines(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + '\n{"prompt": "x", "chosen": \n' + json.dumps(["a", "b"]) + "\n"
                    + json.dumps(GOOD) + "\n", encoding="utf-8")
    records, report = load_preferences(path)
    assert [r.origin.row for r in records] == [1, 4]
    assert report.skipped == {"malformed JSON": 1, "not a JSON object": 1}
    assert report.skipped_rows == {"malformed JSON": [2], "not a JSON object": [3]}
    with pytest.raises(DataError, match="malformed JSON") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 2, None)

    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(["a", "b"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object, got list") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 2, None)
    # read_rows, used directly by other readers, still raises at the bad line.
    rows, _ = read_rows(path)
    with pytest.raises(DataError, match="expected a JSON object, got list"):
        list(rows)


def test_a_malformed_first_line_does_not_decide_the_format(tmp_path):
    path = tmp_path / "first.jsonl"
    path.write_text("{oops\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    records, report = load_preferences(path)
    assert report.format == "jsonl/standard" and [r.origin.row for r in records] == [2]
    assert report.skipped == {"malformed JSON": 1}


def test_skipped_rows_remember_the_first_five_row_numbers(tmp_path):
    rows = [GOOD] + [{"prompt": "p", "chosen": "x", "rejected": "x"}] * 7
    records, report = load_preferences(write_jsonl(tmp_path / "same.jsonl", rows))
    assert report.skipped == {"chosen identical to rejected": 7}
    assert report.skipped_rows == {"chosen identical to rejected": [2, 3, 4, 5, 6]}
    assert "skipped 7 chosen identical to rejected (rows 2, 3, 4, 5, 6, ...)" in report.summary()


# --------------------------------------------------------------------------- skips


SKIP_ROWS = [
    GOOD,
    {"prompt": "  \n", "chosen": "a", "rejected": "b"},
    {"prompt": "p", "chosen": "", "rejected": "b"},
    {"prompt": "p", "chosen": "a", "rejected": " \t"},
    {"prompt": "p", "chosen": "Same answer.", "rejected": "  Same answer.\n"},
    {"prompt": "Say bye.", "chosen": "Bye!", "rejected": "Hi."},
]


def test_content_problems_are_counted_as_skips(tmp_path):
    path = write_jsonl(tmp_path / "skips.jsonl", SKIP_ROWS)
    records, report = load_preferences(path)
    assert [r.origin.row for r in records] == [1, 6]
    assert report.rows_read == 6 and report.kept == 2
    assert report.skipped == {"empty prompt": 1, "empty response": 2, "chosen identical to rejected": 1}
    assert report.skipped_rows == {"empty prompt": [2], "empty response": [3, 4], "chosen identical to rejected": [5]}
    # Most frequent reason first, each with its rows.
    assert ("skipped 2 empty response (rows 3, 4), 1 chosen identical to rejected (row 5), 1 empty prompt (row 2)"
            in report.summary())


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (2, "prompt", "empty prompt"),
        (3, "chosen", "empty response"),
        (4, "rejected", "empty response"),
        (5, "rejected", "chosen identical to rejected"),
    ],
)
def test_strict_turns_skips_into_errors(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "skips.jsonl", [SKIP_ROWS[0], SKIP_ROWS[row - 1]])
    with pytest.raises(DataError, match=reason) as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 2, field)


def test_strict_names_the_source_field_of_an_empty_pku_response(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [_pku(response_1="   ")])
    with pytest.raises(DataError, match="empty response") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 1, "response_1")


def test_all_rows_skipped_and_empty_file_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", SKIP_ROWS[1:5])
    with pytest.raises(
        DataError,
        match=r"no usable rows in .*bad.jsonl: read 4 rows \(jsonl/standard\), all "
        r"skipped \(2 empty response \(rows 2, 3\), 1 chosen identical to rejected \(row 4\), 1 empty prompt "
        r"\(row 1\)\); the first: .*bad.jsonl, row 1, field 'prompt': empty prompt",
    ):
        load_preferences(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows found"):
        load_preferences(empty)


def test_limit_keeps_the_first_usable_records(tmp_path):
    path = write_jsonl(tmp_path / "skips.jsonl", SKIP_ROWS)
    records, report = load_preferences(path, limit=2)
    assert [r.origin.row for r in records] == [1, 6] and report.rows_read == 6
    records, report = load_preferences(path, limit=1)
    assert [r.origin.row for r in records] == [1] and report.rows_read == 1 and report.skipped == {}
    with pytest.raises(ConfigError):
        load_preferences(path, limit=0)


# --------------------------------------------------------------------------- containers


def _key(records: list) -> list:
    # Origins differ only by file name across containers; rows must match.
    return [(r.prompt, r.chosen, r.rejected, r.origin.row) for r in records]


@pytest.mark.parametrize("name", sorted(FIXTURE_FORMATS))
def test_all_containers_give_equal_records(tmp_path, name):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_rows(name)
    expected, report = load_preferences(FIXTURES / name)
    assert report.format == f"jsonl/{FIXTURE_FORMATS[name]}" and len(expected) == len(rows)

    (tmp_path / "list.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(str(tmp_path / "dd"))

    for path, split, container in [
        ("list.json", None, "json"),
        ("wrapped.json", None, "json"),
        ("rows.parquet", None, "parquet"),
        ("ds", None, "datasets"),
        ("dd", "test", "datasets"),
    ]:
        got, report = load_preferences(tmp_path / path, split=split)
        assert _key(got) == _key(expected), path
        assert report.format == f"{container}/{FIXTURE_FORMATS[name]}"
        assert got[0].origin == Origin(str(tmp_path / path), 1)
    # The DatasetDict's default split is "train".
    assert _key(load_preferences(tmp_path / "dd")[0]) == _key(expected[:1])


def test_datasetdict_missing_split_lists_available(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([GOOD])
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="split 'train' not found; available splits: validation, test"):
        load_preferences(tmp_path / "dd")


def test_json_container_shapes(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [GOOD], "test": [GOOD, GOOD]}), encoding="utf-8")
    assert len(load_preferences(path)[0]) == 1
    assert len(load_preferences(path, split="test")[0]) == 2
    path.write_text(json.dumps({"items": [GOOD]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"found keys \['items'\]"):
        load_preferences(path)
    path.write_text(json.dumps([GOOD, "oops"]), encoding="utf-8")
    records, report = load_preferences(path)
    assert len(records) == 1 and report.skipped_rows == {"not a JSON object": [2]}
    with pytest.raises(DataError, match="expected a JSON object, got str") as err:
        load_preferences(path, strict=True)
    assert_where(err, path, 2, None)
    # A .json file is one document: broken JSON or bytes are a problem of the file, never a skip.
    path.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"}, {oops}]', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON: .* at line 1"):
        load_preferences(path)
    path.write_bytes(b'[{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}]')
    with pytest.raises(DataError, match="not valid UTF-8 at byte offset 16"):
        load_preferences(path)


def test_read_rows_returns_row_numbers_and_container(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n" + json.dumps(GOOD) + "\n   \n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    rows, container = read_rows(path)
    assert container == "jsonl" and [n for n, _ in rows] == [2, 4]


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such file or folder") as err:
        load_preferences(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err.value)
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,chosen,rejected\n", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"unsupported file type '\.csv'; supported inputs: \.jsonl, \.json, "
        r"\.parquet, a folder written by datasets",
    ):
        load_preferences(csv)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_preferences(tmp_path / "plain")


def test_hub_id_offline_is_a_clear_error_without_network(monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not be called offline")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="disabled because HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set") as err:
        load_preferences("Anthropic/hh-rlhf")
    assert str(err.value).startswith("Anthropic/hh-rlhf: no such file or folder")


def test_hub_id_online_calls_load_dataset_with_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):  # datasets.load_dataset's signature
        calls.append((path, name, split))
        return datasets.Dataset.from_list(fixture_rows("hh_rlhf.jsonl"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    records, report = load_preferences("Anthropic/hh-rlhf", split="test")
    assert calls == [("Anthropic/hh-rlhf", None, "test")]
    assert report.format == "hub/hh_rlhf"
    assert _key(records) == _key(load_preferences(FIXTURES / "hh_rlhf.jsonl")[0])
    load_prompts("Anthropic/hh-rlhf", subset="harmless-base")
    assert calls[-1] == ("Anthropic/hh-rlhf", "harmless-base", "train")


# --------------------------------------------------------------------------- prompts


PROMPT_ROWS = [
    {"prompt": "Summarise: the meeting moved to Friday.", "response": "Meeting now on Friday.", "id": "a1"},
    {"prompt": [user("Hello")], "response": "Hi there!"},
    {"prompt": "Write a haiku about rain.", "response": "  "},
    {"prompt": " ", "response": "x"},
    {"prompt": "No answer yet.", "response": None},
]


def test_load_prompts_with_responses(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", PROMPT_ROWS)
    records, report = load_prompts(path)
    assert records[0] == PromptRecord(
        "Summarise: the meeting moved to Friday.", "Meeting now on Friday.", Origin(str(path), 1)
    )
    assert records[0].meta == {"id": "a1"}
    assert records[1].prompt == [user("Hello")]
    assert [r.origin.row for r in records] == [1, 2, 3, 5] and records[3].response is None
    assert report.skipped == {"empty prompt": 1} and report.format == "jsonl/prompt"
    with pytest.raises(DataError, match="empty prompt") as err:
        load_prompts(path, strict=True)
    assert_where(err, path, 4, "prompt")


def test_load_prompts_require_response(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", PROMPT_ROWS[:4])
    records, report = load_prompts(path, require_response=True)
    assert [r.origin.row for r in records] == [1, 2]
    assert report.skipped == {"empty response": 1, "empty prompt": 1}
    with pytest.raises(DataError, match="empty response") as err:
        load_prompts(path, require_response=True, strict=True)
    assert_where(err, path, 3, "response")

    missing = write_jsonl(tmp_path / "missing.jsonl", [PROMPT_ROWS[0], {"prompt": "Hi"}])
    records, report = load_prompts(missing, require_response=True)
    assert len(records) == 1 and report.skipped_rows == {"missing field: response": [2]}
    with pytest.raises(DataError, match="the row has no 'response'") as err:
        load_prompts(missing, require_response=True, strict=True)
    assert_where(err, missing, 2, "response")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi", "response": 5}])
    with pytest.raises(DataError, match="all skipped .*expected a string, got int"):
        load_prompts(bad)
    with pytest.raises(DataError, match="expected a string, got int") as err:
        load_prompts(bad, strict=True)
    assert_where(err, bad, 1, "response")


def test_preference_rows_serve_as_prompts():
    records, report = load_prompts(FIXTURES / "hh_rlhf.jsonl")
    assert report.format == "jsonl/hh_rlhf"
    assert records[0] == PromptRecord(
        [user("What are some good vegetables to grow on a balcony?")],
        None,
        Origin(str(FIXTURES / "hh_rlhf.jsonl"), 1),
    )
    assert records[0].meta["rejected"] == "Potatoes."
    records, report = load_prompts(FIXTURES / "standard.jsonl", limit=2)
    assert [(r.prompt, r.response) for r in records] == [
        ("Explain what a hash table is in one sentence.", None),
        ("Translate to French: The library opens at nine.", None),
    ]
    records, _ = load_prompts(FIXTURES / "summarize_comparisons.jsonl")
    assert records[2].prompt.startswith("ARTICLE: A family dog") and records[2].response is None
    with pytest.raises(DataError, match="the row has no 'response'"):
        load_prompts(FIXTURES / "pku_saferlhf.jsonl", require_response=True)
