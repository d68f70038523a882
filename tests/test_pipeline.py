"""A miniature run of the whole experiment (the demo's code path), end to end."""

from __future__ import annotations

import json

import pytest

from seq2seq_rm.cli import main


def test_miniature_experiment_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main([
        "experiment", "--out", str(out), "--seeds", "2", "size=tiny",
        "train_pairs=10", "sft_rows=8", "ppo_prompts=8", "test_prompts=3", "ood_prompts=3",
        "sft.epochs=1", "rm.epochs=1", "ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2",
        "ppo.sampling.max_new_tokens=8", "eval_max_new_tokens=8", "n_boot=200", "ablation=[{rematch: positive}]",
        "bias_sweep=[{refusal_bias: 0.0, length_bias: 0.0}]", "sweep_seeds=[5]",
    ])
    assert code == 0
    printed = capsys.readouterr().out  # the run ends with its headline numbers on the terminal
    assert "Headline" in printed and "test seq2seq vs scalar" in printed and "N=18" in printed
    assert "SFT quality / reference quality (test): instruct" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["arms"] == ["sft", "scalar", "seq2seq", "seq2seq[rematch=positive]"]
    assert report["seeds"] == [0, 1] and report["commit"]
    assert report["extraction"]["seq2seq[rematch=positive]"]["rematch"] == "positive"
    assert report["extraction"]["seq2seq"]["rematch"] == "zero" and report["extraction"]["scalar"] is None
    for split in ("test", "ood"):
        wr = report["splits"][split]["win_rates"]
        assert set(wr) == {"seq2seq vs scalar", "seq2seq vs sft", "scalar vs sft", "seq2seq[rematch=positive] vs scalar"}
        for w in wr.values():
            assert w["n"] + w["invalid"] == 2 * 9  # 2 seeds x 3 prompts x 3 tasks
            assert set(w["by_seed"]) == {"0", "1"} and w["seeds"] == 2
            assert sum(s["n"] for s in w["by_seed"].values()) == w["n"]
            assert w["ci_low"] <= w["win_rate"] <= w["ci_high"]
            assert all(s["position_bias"] == 0.0 for s in w["by_seed"].values())  # the oracle has none
        arms = report["splits"][split]["arms"]
        assert set(arms["seq2seq"]["quality"]) == {"safety", "summarize", "instruct"}
        assert arms["seq2seq"]["n"] == 9 and set(arms["seq2seq"]["by_seed"]) == {"0", "1"}
        assert set(arms["sft"]["refusal"]) <= {"benign", "risky_benign", "hazardous"}
        # the tasks' reference responses are what SFT is measured against: the oracle's ideal answers
        ref = report["splits"][split]["reference"]["quality"]
        assert set(ref) == {"safety", "summarize", "instruct"} and all(v == pytest.approx(1.0) for v in ref.values())
        share = report["splits"][split]["sft_share_of_reference"]
        assert share == pytest.approx({t: arms["sft"]["quality"][t] / ref[t] for t in ref})
    for seed in ("0", "1"):
        for kind in ("scalar", "seq2seq"):
            rm = report["rm_eval"][seed][kind]
            assert rm["oracle"]["pairs"] == rm["annotator"]["pairs"] == 9 and rm["oracle"]["calibration"]
            # broken down by task: 3 held-out pairs of each, and together the overall accuracy
            groups = rm["oracle"]["by"]["task"]
            assert set(groups) == {"safety", "summarize", "instruct"} and {g["pairs"] for g in groups.values()} == {3}
            assert sum(g["accuracy"] for g in groups.values()) / 3 == pytest.approx(rm["oracle"]["accuracy"])
            # and by kind of comparison, named by task and the oracle's better kind first
            pairs = rm["oracle"]["by"]["pair"]
            assert sum(g["pairs"] for g in pairs.values()) == 9
            assert all(label.split(":")[0] in groups and " > " in label for label in pairs)
    # one shared SFT policy: every seed's PPO started from it
    policy = json.loads((out / "seed-1/ppo-seq2seq.run/config.json").read_text())["policy"]
    assert policy == str(out / "shared" / "sft") and not (out / "seed-1" / "sft").exists()
    # every PPO step's rollouts were scored by the oracle (the over-optimisation curves)
    rows = [json.loads(x) for x in (out / "seed-0/ppo-scalar.run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["oracle_quality"] <= 1 for r in rows) and "words_safety" in rows[0]
    sweep = report["sweep"]
    assert len(sweep) == 1 and sweep[0]["annotator"]["refusal_bias"] == 0.0 and sweep[0]["seeds"] == [5]
    assert sweep[0]["seq2seq vs scalar"]["n"] == 9 and set(sweep[0]["arms"]) == {"sft", "scalar", "seq2seq"}
    # the sweep point's own RMs (seed 5), judged against the oracle and against that point's annotator
    sweep_rm = json.loads((out / "sweep/point-0/seed-5/rm-scalar/seq2seq_rm.json").read_text())
    assert sweep_rm["kind"] == "scalar"
    acc = sweep[0]["rm_accuracy"]
    assert set(acc) == {"scalar", "seq2seq"}
    from seq2seq_rm.data.loading import load_preferences
    from seq2seq_rm.rewards import load_reward_model
    from seq2seq_rm.rewards.evaluate import evaluate_pairs

    for labels, name in (("oracle", "test_pairs_oracle"), ("annotator", "test_pairs")):
        recs = load_preferences(str(out / f"sweep/point-0/seed-5/data/{name}.jsonl"))[0]
        again = evaluate_pairs(load_reward_model(str(out / "sweep/point-0/seed-5/rm-scalar")), recs)
        assert acc["scalar"][labels] == pytest.approx(again["accuracy"])
    assert report["samples"] and "rm_rewrite" in report["samples"][0]
    html = (out / "report.html").read_text()
    for png in ("win_rates.png", "refusals.png", "lengths.png", "overoptimisation.png", "length_curves.png",
                "rm_calibration.png", "bias_sweep.png"):
        assert (out / png).stat().st_size > 1000 and png in html
    assert "token_rewards.html" in html and (out / "token_rewards.html").is_file()
    assert "seq2seq: constant, rematch=zero, normalize=none" in html  # arms named with their extraction options
    md = (out / "report.md").read_text()
    assert "| seq2seq vs scalar | all seeds |" in md and "|  | seed 1 |" in md
    assert "vs oracle: summarize |" in md and "vs the oracle: summarize" in html
    assert "RM accuracy vs oracle by comparison" in md and "by kind of comparison" in html
    assert "summarize: scalar" in printed  # per-task RM accuracy in the headline
    # the miniature's untrained policies write empty answers that all tie: flagged, not reported as findings
    if report["splits"]["test"]["win_rates"]["seq2seq vs scalar"]["ties"] == 18:
        assert any("seq2seq vs scalar (test): 18 of 18 pairs are ties" in w for w in report["warnings"])
        assert "Warnings" in html and "Warnings" in md
    if report["splits"]["test"]["arms"]["sft"]["empty"]:
        assert any(w.startswith("sft (test):") and "empty responses" in w for w in report["warnings"])
    assert json.loads((out / "experiment.json").read_text())["status"] == "done"
    # every arm answered every test prompt, and the responses file aligns with the prompts
    prompts = [json.loads(x)["prompt"] for x in (out / "seed-0/data/test_prompts.jsonl").read_text().splitlines()]
    responses = [json.loads(x) for x in (out / "seed-0/responses/seq2seq-test.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in responses] == prompts
