"""A miniature run of the whole experiment (the demo's code path), end to end."""

from __future__ import annotations

import json

from seq2seq_rm.cli import main


def test_miniature_experiment_writes_a_complete_report(tmp_path):
    out = tmp_path / "exp"
    code = main([
        "demo", "--out", str(out), "--seed", "3",
        "train_pairs=10", "ppo_prompts=8", "test_prompts=3", "ood_prompts=3",
        "sft.epochs=1", "rm.epochs=1", "ppo.steps=1", "ppo.batch_size=4", "ppo.mini_batch_size=2",
        "ppo.sampling.max_new_tokens=8", "eval_max_new_tokens=8", "n_boot=200", "ablation=[{rematch: positive}]",
    ])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["arms"] == ["sft", "scalar", "seq2seq", "seq2seq[rematch=positive]"]
    for split in ("test", "ood"):
        wr = report["splits"][split]["win_rates"]
        assert set(wr) == {"seq2seq vs scalar", "seq2seq vs sft", "scalar vs sft", "seq2seq[rematch=positive] vs scalar"}
        for w in wr.values():
            assert w["n"] + w["invalid"] == 9  # 3 prompts x 3 tasks
            assert w["ci_low"] <= w["win_rate"] <= w["ci_high"]
            assert w["position_bias"] == 0.0  # the oracle judge has no position bias
        arms = report["splits"][split]["arms"]
        assert set(arms["seq2seq"]["quality"]) == {"safety", "summarize", "instruct"}
        assert set(arms["sft"]["refusal"]) <= {"benign", "risky_benign", "hazardous"}
    assert set(report["rm_eval"]["3"]) == {"scalar", "seq2seq"}
    html = (out / "report.html").read_text()
    for png in ("win_rates.png", "refusals.png", "lengths.png", "ppo_curves.png"):
        assert (out / png).stat().st_size > 1000 and png in html
    assert "token_rewards.html" in html and (out / "token_rewards.html").is_file()
    # every arm answered every test prompt, and the responses file aligns with the prompts
    prompts = [json.loads(x)["prompt"] for x in (out / "seed-3/data/test_prompts.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (out / "seed-3/responses/seq2seq-test.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
