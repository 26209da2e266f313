"""evaluate.py: the CLI end to end with both backends, results and tables, one-line errors, Table 6 stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from task_helpers import SPLITS

import evaluate
from bcmb_jax.evaluation import encoding
from bcmb_jax.evaluation.results import result_paths


def run_cli(*args: str) -> int:
    return evaluate.main([str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# End to end, both backends


def _check_predictions(obj: dict, pred_dir: Path) -> None:
    """The reported test metrics are seqeval / sklearn recomputed from the saved predictions."""
    from seqeval.metrics import f1_score as seq_f1
    from sklearn.metrics import f1_score

    for seed, res in obj["seeds"].items():
        rows = [json.loads(line) for line in (pred_dir / f"seed{seed}" / "test_predictions.jsonl").open()]
        assert len(rows) == SPLITS["test"]
        if obj["kind"] == "ner":
            assert all(len(r["tokens"]) == len(r["gold"]) == len(r["pred"]) for r in rows)
            want = seq_f1([r["gold"] for r in rows], [r["pred"] for r in rows])
            assert res["test"]["f1"] == pytest.approx(want, abs=1e-12)
        elif obj["kind"] == "classification":
            want = f1_score([r["gold"] for r in rows], [r["pred"] for r in rows], average="weighted", zero_division=0)
            assert res["test"]["weighted_f1"] == pytest.approx(want, abs=1e-12)
        else:
            hot = [[[int(n in r[k]) for n in obj["labels"]] for r in rows] for k in ("gold", "pred")]
            want = f1_score(*hot, average="weighted", zero_division=0)
            assert res["test"]["weighted_f1"] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("task, data, seeds, epochs", [("csv", "csv", "42,43", 2), ("conll", "conll", "42,43", 2),
                                                       ("csv", "multi", "7", 1)])
def test_end_to_end_jax_and_torch_agree(task, data, seeds, epochs, tiny, tmp_path):
    results = tmp_path / "results"
    extra = ["label_sep=;"] if data == "multi" else []
    if task != "csv" or data == "multi":  # the default (blocked) attention in one run, the faster-compiling one else
        extra.append("attention_backend=reference")
    out = {}
    for backend in ("jax", "torch"):
        rc = run_cli("--model", tiny["model"], "--task", task, "--data", tiny[data], "--backend", backend,
                     "--seeds", seeds, "--epochs", epochs, "--lr", "1e-3", "--results-dir", results, "batch_size=8",
                     *extra)
        assert rc == 0
        path, pred_dir = result_paths(results, "tiny", backend, task)
        obj = out[backend] = json.loads(path.read_text())
        assert obj["task"] == task and obj["backend"] == backend and sorted(obj["seeds"]) == seeds.split(",")
        assert obj["config"]["lr"] == 1e-3 and obj["config"]["max_length"] == 512
        assert obj["sources"]["lr"] == obj["sources"]["batch_size"] == "user" and obj["config"]["weight_decay"] == 1e-5
        assert obj["sources"]["weight_decay"] == "paper" and obj["sources"]["seeds"] == "user"
        main = obj["main_metric"]
        for res in obj["seeds"].values():
            assert len(res["epochs"]) == epochs and all(len(e["losses"]) == 5 for e in res["epochs"])
            vals = [e["val"][main] for e in res["epochs"]]
            assert res["best_epoch"] == 1 + int(np.argmax(vals)) and res["val"][main] == max(vals)
        assert obj["median"][main] == pytest.approx(np.median([r["test"][main] for r in obj["seeds"].values()]))
        _check_predictions(obj, pred_dir)
    # Same seed, same initial weights, same batches: the two backends' training losses agree step by step.
    for seed in seeds.split(","):
        jax_losses = [x for e in out["jax"]["seeds"][seed]["epochs"] for x in e["losses"]]
        torch_losses = [x for e in out["torch"]["seeds"][seed]["epochs"] for x in e["losses"]]
        np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
    if "," in seeds:  # seeds differ from the first step on (head init and order)
        first = [out["jax"]["seeds"][s]["epochs"][0]["losses"][0] for s in seeds.split(",")]
        assert abs(first[0] - first[1]) > 1e-3
    table = (results / "table.md").read_text()
    main = out["jax"]["main_metric"]
    for backend in ("jax", "torch"):
        cell = f"{100 * out[backend]['median'][main]:.1f} ({100 * out[backend]['min'][main]:.1f}–"
        assert any(line.startswith(f"| tiny | {backend} |") and cell in line for line in table.splitlines())


def test_torch_backend_runs_other_hf_encoders(tiny, tmp_path, capsys):
    """Any HF encoder works with the torch backend (a tiny BERT here); the JAX backend refuses it cleanly."""
    import transformers as tf

    bert = tmp_path / "bert"
    cfg = tf.BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128, pad_token_id=3)
    tf.BertModel(cfg).save_pretrained(bert)
    common = ["--model", bert, "--task", "csv", "--data", tiny["csv"], "--seeds", "1,2", "--epochs", 1,
              "--results-dir", tmp_path / "res", f"tokenizer={tiny['tok']}", "batch_size=8"]
    assert run_cli(*common, "--backend", "jax") == 2
    assert "JAX backend runs ModernBERT only" in capsys.readouterr().err
    assert run_cli(*common, "--backend", "torch") == 0
    obj = json.loads((tmp_path / "res" / "bert" / "torch" / "csv.json").read_text())
    assert obj["config"]["max_length"] == 128
    l1, l2 = (obj["seeds"][s]["epochs"][0]["losses"][0] for s in ("1", "2"))
    assert abs(l1 - l2) > 1e-4  # the classifier init follows the seed


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_input_gives_one_line_errors(tiny, tmp_path, capsys):
    base = ["--model", tiny["model"], "--results-dir", tmp_path / "res", "--epochs", 1, "--seeds", 1]

    def error(*args) -> str:
        assert run_cli(*base, *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    # A label outside the task's list names the file and line.
    err = error("--task", "csv", "--data", tiny["csv"], "labels=[cardiac,infection]")
    assert "train.csv:" in err and "'other'" in err
    bad = tmp_path / "conll"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / f"{split}.txt").write_text("aspirin\tB-DRUG\n" + ("x BAD\n" if split == "dev" else "today O\n"))
    assert "dev.txt:2" in error("--task", "conll", "--data", bad)
    assert "unknown key(s) ['colour']" in error("--task", "csv", "--data", tiny["csv"], "colour=red")
    assert "must be >= 1" in error("--task", "csv", "--data", tiny["csv"], "batch_size=0")
    assert "no such directory" in error("--task", "csv", "--data", tiny["csv"], "--model",
                                                     tmp_path / "missing")
    assert "unknown task" in error("--task", "nope", "--data", tiny["csv"])
    assert "--seeds" in error("--task", "csv", "--data", tiny["csv"], "--seeds", "1,x")
    assert "--data" in error("--task", "csv")
    assert not (tmp_path / "res").exists()  # nothing half-written


def test_stats_prints_table6_counted_the_papers_way(tiny, capsys):
    assert run_cli("stats", "--task", "conll", "--data", tiny["conll"], "--tokenizer", tiny["tok"], "--json") == 0
    out = capsys.readouterr().out.splitlines()
    row = json.loads(out[-1])["conll"]
    assert row["classes"] == 5 and list(row["examples"].values()) == list(SPLITS.values())
    assert "conll (paper)" not in "\n".join(out)
    enc = encoding.load_encoder(tiny["tok"], prefix_space=False)
    train = [[w for w in block.split("\n") if w] for block in (tiny["conll"] / "train.txt").read_text().split("\n\n")]
    want = np.mean([2 + sum(len(enc.tokenizer.encode(line.split("\t")[0], add_special_tokens=False).ids)
                            for line in sent) for sent in train if sent])
    assert abs(row["avg_tokens"]["train"] - want) < 1e-9
    assert out[2].startswith(f"| conll (ours) | 5 | {SPLITS['train']} | {SPLITS['dev']} | {SPLITS['test']} |")
