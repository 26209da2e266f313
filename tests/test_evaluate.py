"""evaluate.py and bcmb_jax.finetune(_torch): tokenization, packing, the protocol, both backends, results, errors."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, hf_model

import evaluate
from bcmb_jax import encoding, finetune_jax
from bcmb_jax import finetune as F
from bcmb_jax.config import ModelConfig
from bcmb_jax.metrics import IGNORE
from bcmb_jax.results import result_paths

WORDS = ("patient reports denies history of pain fever cough nausea with without mild severe since yesterday today "
         "left right chest abdomen").split()
ENTITIES = {"DRUG": [["aspirin"], ["heparin"], ["metoprolol"], ["insulin", "glargine"]],
            "DIS": [["pneumonia"], ["heart", "failure"], ["sepsis"], ["atrial", "fibrillation"]]}
KEYWORD = {"cardiac": "chest", "infection": "fever", "other": "today"}
TINY_MODEL = dict(vocab_size=600, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  local_attention=16, max_position_embeddings=512, pad_token_id=3, cls_token_id=1, sep_token_id=2,
                  bos_token_id=1, eos_token_id=2, mask_token_id=4, classifier_pooling="mean")
SPLITS = {"train": 40, "dev": 16, "test": 16}


def write_csv_task(d: Path, multilabel: bool = False, seed: int = 0) -> Path:
    """Keyword-determined labels ("a;b" cells when multi-label)."""
    rng = random.Random(seed)
    d.mkdir(parents=True)
    for split, n in SPLITS.items():
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for _ in range(n):
                labels = rng.sample(sorted(KEYWORD), rng.randint(1, 2) if multilabel else 1)
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
                for lab in labels:
                    words.insert(rng.randrange(len(words)), KEYWORD[lab])
                w.writerow([" ".join(words), ";".join(labels)])
    return d


def write_conll_task(d: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    d.mkdir(parents=True)
    for split, n in SPLITS.items():
        lines = []
        for _ in range(n):
            for _ in range(rng.randint(2, 5)):
                lines += [f"{rng.choice(WORDS)}\tO" for _ in range(rng.randint(1, 4))]
                if rng.random() < 0.6:
                    typ = rng.choice(sorted(ENTITIES))
                    ent = rng.choice(ENTITIES[typ])
                    lines += [f"{w}\t{'B' if k == 0 else 'I'}-{typ}" for k, w in enumerate(ent)]
            lines.append("")
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A BPE tokenizer, a random tiny JAX ModernBERT checkpoint holding it, and three small tasks."""
    from bcmb_jax import demo_data, model, pretrained

    d = tmp_path_factory.mktemp("evaluate")
    demo_data.write_corpus(d / "notes.jsonl", n_docs=120, seed=1)
    demo_data.build_tokenizer([d / "notes.jsonl"], d / "tok", vocab_size=600)
    mlm = model.build(ModelConfig(**TINY_MODEL), "mlm", seed=0)
    pretrained.save_jax(mlm, d / "tiny", tokenizer_dir=d / "tok")
    return {"root": d, "model": d / "tiny", "tok": d / "tok", "csv": write_csv_task(d / "csv"),
            "multi": write_csv_task(d / "multi", multilabel=True), "conll": write_conll_task(d / "conll")}


def run_cli(*args: str) -> int:
    return evaluate.main([str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# Tokenization


def _hf_with_prefix_space(tok_dir: Path):
    """transformers' fast tokenizer with the ByteLevel prefix space the paper's transformers 4.52 set."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")


@pytest.mark.parametrize("which", ["tiny", "modernbert"])
def test_tokenization_matches_hf_alignment(which, tiny):
    tok_dir = tiny["tok"] if which == "tiny" else SHARED_DATA / "modernbert_tokenizer"
    if not tok_dir.is_dir():
        pytest.skip(f"{tok_dir} not available")
    enc = encoding.load_encoder(tok_dir)
    hf = _hf_with_prefix_space(tok_dir)
    text = "Patient denies chest pain; @CHEMICAL$ inhibits @GENE$ (x2)."
    assert hf.convert_ids_to_tokens(enc.text([text])[0])[0].startswith("Ġ")  # the prefix space is there
    words = ["Patient", "denies", "chest-pain", ".", "Hello", "insulin", "glargine", "today"]
    tags = [0, 1, 2, 0, 1, 2, 2, 0]
    rows = [{"id": "a", "tokens": words, "tags": tags}]
    for max_length in (64, 9):  # 9: truncation cuts words off, which then leave the evaluation
        (ex,), stats = encoding.encode_examples(rows, "ner", enc, max_length)
        ref = hf(words, is_split_into_words=True, truncation=True, max_length=max_length)
        assert ex.ids.tolist() == ref["input_ids"]
        # The paper's tokenize_and_align_labels: the label on a word's first sub-token only.
        want, prev = [], None
        for w in ref.word_ids():
            want.append(-100 if w is None or w == prev else tags[w])
            prev = w
        assert ex.token_labels.tolist() == want
        kept = sorted({w for w in ref.word_ids() if w is not None})
        assert ex.words == [words[w] for w in kept] and ex.tags == [tags[w] for w in kept]
        assert stats["dropped_words"] == len(words) - len(kept)
    assert stats["truncated_examples"] == 1 and len(ex.ids) == 9
    (cls,), _ = encoding.encode_examples([{"id": "b", "text": text, "label": 1}], "classification", enc, 10)
    assert cls.ids.tolist() == hf(text, truncation=True, max_length=10)["input_ids"]


# ---------------------------------------------------------------------------------------------
# Packing


def test_packed_training_loss_and_predictions_equal_unpacked_runs(tiny):
    """Packed rows give each example the logits it gets alone, and the packed loss is HF's batch loss."""
    import functools

    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bcmb_jax import model as M
    from bcmb_jax.encoding import Example
    from bcmb_jax.infer import encode

    rng = np.random.default_rng(0)
    lengths = [5, 17, 9, 30, 3, 12, 22, 8]
    cfg = ModelConfig(**{**TINY_MODEL, "num_labels": 3})
    ids = [np.concatenate([[1], rng.integers(5, 600, n - 2), [2]]).astype(np.int32) for n in lengths]
    T = 32
    models, refs = {}, {}
    for task in ("sequence", "token"):
        models[task] = M.build(cfg, task, seed=1, runtime="reference")  # compiles faster
        rows = np.full((len(ids), T), 3, np.int32)
        for i, x in enumerate(ids):
            rows[i, :len(x)] = x
        mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
        logits = np.asarray(models[task](rows, attention_mask=mask).logits)  # each row alone: padded, unpacked
        refs[task] = [logits[i, :n] for i, n in enumerate(lengths)] if task == "token" else list(logits)
        # Predictions: infer.encode's packed rows vs the same examples alone.
        for got, ref in zip(encode(models[task], ids, row_len=64, batch_tokens=256), refs[task]):
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5

    for kind in ("classification", "multilabel", "ner"):
        task = "token" if kind == "ner" else "sequence"
        batch = []
        for i, x in enumerate(ids):
            if kind == "ner":
                y = rng.integers(0, 3, len(x)).astype(np.int32)
                y[rng.random(len(x)) < 0.4] = IGNORE
                batch.append(Example(str(i), x, token_labels=y))
            else:
                lab = int(rng.integers(0, 3)) if kind == "classification" else (rng.random(3) < 0.5).astype(np.float32)
                batch.append(Example(str(i), x, label=lab))
        arrays = finetune_jax.pack_batch(batch, kind, 3, 3, max_docs=8, budget=48)
        assert arrays["input_ids"].shape[0] > 1 and arrays["input_ids"].shape[1] in finetune_jax._LEN_BUCKETS
        assert (arrays["segment_ids"] > 0).sum() == sum(lengths)  # every token once, no truncation
        ref = refs[task]
        if kind == "ner":
            logits = np.concatenate([r[e.token_labels != IGNORE] for r, e in zip(ref, batch)])
            y = np.concatenate([e.token_labels[e.token_labels != IGNORE] for e in batch])
            want = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(y)).mean()
        elif kind == "classification":
            want = optax.softmax_cross_entropy_with_integer_labels(
                jnp.asarray(np.stack(ref)), jnp.asarray([e.label for e in batch])).mean()
        else:
            want = optax.sigmoid_binary_cross_entropy(jnp.asarray(np.stack(ref)),
                                                      jnp.asarray(np.stack([e.label for e in batch]))).mean()
        loss = nnx.jit(functools.partial(finetune_jax.packed_loss, kind=kind))
        got = loss(models[task], {k: jnp.asarray(v) for k, v in arrays.items()})
        assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))


# ---------------------------------------------------------------------------------------------
# The protocol


class ScriptedBackend:
    """Validation accuracy follows a script; records what `fit` asks for."""

    name = "scripted"

    def __init__(self, val_correct: list[int]):
        self.script, self.epoch, self.lrs, self.batches, self.restored = val_correct, 0, [], [], None

    def start(self, seed, lr, total_steps, warmup_steps):
        self.total = total_steps

    def train_step(self, batch, lr):
        self.lrs.append(lr)
        self.batches.append([e.id for e in batch])
        return 1.0

    def predict(self, examples):
        if examples[0].id.startswith("val"):
            self.epoch += 1
            k = self.script[self.epoch - 1]
        else:
            k = self.script[(self.restored or self.epoch) - 1]
        return [np.array([1.0, 0.0]) if i < k else np.array([0.0, 1.0]) for i in range(len(examples))]

    def snapshot(self):
        return self.epoch

    def restore(self, snap):
        self.restored = snap


def _scripted_data(n_train: int) -> encoding.EncodedTask:
    def ex(split, i):
        return encoding.Example(f"{split}{i}", np.array([1, 5, 2], np.int32), label=0)

    return encoding.EncodedTask("toy", "classification", ["a", "b"], [ex("train", i) for i in range(n_train)],
                         [ex("val", i) for i in range(10)], [ex("test", i) for i in range(10)], max_length=8)


def test_fit_keeps_the_best_epoch_and_stops_on_patience():
    import torch
    from transformers import get_linear_schedule_with_warmup

    data = _scripted_data(37)
    cfg = F.FinetuneConfig(epochs=6, patience=2, batch_size=8, warmup_ratio=0.1)
    b = ScriptedBackend([2, 6, 4, 6, 3, 9])  # the tie at epoch 4 is no improvement: stop after epoch 4
    res = F.fit(b, data, cfg, seed=42, lr=1e-3)
    assert [e["epoch"] for e in res["epochs"]] == [1, 2, 3, 4] and res["best_epoch"] == 2 and b.restored == 2
    assert res["test"]["accuracy"] == 0.6 and res["val"] == res["epochs"][1]["val"]
    assert [len(e["losses"]) for e in res["epochs"]] == [5] * 4
    # Every epoch visits every training example once, in a seed-dependent order.
    for k in range(4):
        assert sorted(i for batch in b.batches[5 * k:5 * k + 5] for i in batch) == sorted(e.id for e in data.train)
    assert b.batches[:5] != b.batches[5:10]
    other = ScriptedBackend([1] * 6)
    F.fit(other, data, F.FinetuneConfig(epochs=1, batch_size=8), seed=43, lr=1e-3)
    assert other.batches != b.batches[:5]
    # The learning rates are HF's linear schedule with warmup over all 6 x 5 steps (early stop or not).
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 3, 30)
    want = []
    for _ in range(20):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(b.lrs, want, rtol=1e-12, atol=0)


def test_seeds_change_order_and_head_and_weight_decay_follows_the_hf_trainer():
    from flax import nnx
    from transformers import Trainer

    from bcmb_jax import model as M
    from bcmb_jax import optim
    from bcmb_jax import params as P

    a, b = F.epoch_batches(50, 16, 42, 1), F.epoch_batches(50, 16, 43, 1)
    assert [len(x) for x in a] == [16, 16, 16, 2] and not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(np.concatenate(a), np.concatenate(F.epoch_batches(50, 16, 42, 1)))
    w42, b42 = F.head_init(42, 256, 6)
    assert w42.shape == (6, 256) and not b42.any() and not np.array_equal(w42, F.head_init(43, 256, 6)[0])
    assert abs(w42.std() * 16 - 0.88) < 0.05 and np.abs(w42).max() <= 2 / 16  # std H^-0.5, cut at 2 std
    # No decay on exactly the tensors the HF Trainer exempts (LayerNorm weights, biases).
    cfg = ModelConfig(**{**TINY_MODEL, "num_labels": 3})
    decay_hf = set(Trainer.get_decay_parameter_names(None, hf_model("sequence", num_labels=3, **_hf_kw())))
    mask = nnx.to_pure_dict(optim.weight_decay_mask(nnx.split(M.build(cfg, "sequence"), nnx.Param, ...)[1]))
    for e in P.key_map(cfg, "sequence"):
        node = mask
        for p in e.path:
            node = node[p]
        assert node == (e.hf in decay_hf), e.hf


def _hf_kw() -> dict:
    return {k: TINY_MODEL[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "local_attention")}


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
    assert "model directory does not exist" in error("--task", "csv", "--data", tiny["csv"], "--model",
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
