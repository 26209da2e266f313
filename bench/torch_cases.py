"""The PyTorch cases: HF transformers inference on right-padded batches and MLM training with torch-optimi."""

from __future__ import annotations

import numpy as np

from bench.measure import PeakMemory, fit_rows, timed, timed_steps

TORCH_IMPL = {"torch-sdpa": "sdpa", "torch-eager": "eager", "torch-compile": "sdpa", "torch-fa2": "flash_attention_2"}


def load(job: dict, masked_lm: bool):
    import torch
    import transformers as tf

    cls = tf.AutoModelForMaskedLM if masked_lm else tf.AutoModel
    dtype = getattr(torch, job["dtype"])
    model = cls.from_pretrained(job["model_dir"], attn_implementation=TORCH_IMPL[job["backend"]], dtype=dtype)
    if job["device_kind"] == "gpu":
        model = model.cuda()
    impl = getattr(model.config, "_attn_implementation", TORCH_IMPL[job["backend"]])
    return model, impl


def infer(job: dict, docs: list[np.ndarray]) -> dict:
    """Batches of `batch_rows` documents, padded on the right to their longest, as a data collator does."""
    import torch

    model, impl = load(job, masked_lm=False)
    model.eval()
    fwd = torch.compile(model) if job["backend"] == "torch-compile" else model
    dev = "cuda" if job["device_kind"] == "gpu" else "cpu"
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    rows = job["batch_rows"]
    batches = []
    for s in range(0, len(docs), rows):
        chunk = docs[s:s + rows]
        T = max(len(d) for d in chunk)
        ids = np.full((len(chunk), T), pad, np.int64)
        mask = np.zeros((len(chunk), T), np.int64)
        for r, d in enumerate(chunk):
            ids[r, :len(d)], mask[r, :len(d)] = d, 1
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))

    def run():
        with torch.inference_mode():
            for ids, mask in batches:
                fwd(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state.cpu()

    run()  # warm-up (and compilation for torch-compile)
    with PeakMemory("torch", job["device_kind"]) as mem:
        times = timed(run, 0, job["repeats"])
    padded = sum(int(m.numel()) for _, m in batches)
    return {"times_s": times, "peak_mem_mb": mem.mb, "memory": mem.how, "attn_implementation": impl,
            "padded_tokens": padded, "packing_efficiency": sum(len(d) for d in docs) / padded}


def train(job: dict, make_batch, rows: int) -> dict:
    """`ModernBertForMaskedLM(labels=...)` as shipped (dense logits), StableAdamW of torch-optimi."""
    import optimi
    import torch

    model, impl = load(job, masked_lm=True)
    model.train()
    if job.get("remat"):
        model.gradient_checkpointing_enable()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = optimi.StableAdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-4,
                             betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5, decouple_lr=True)
    fwd = torch.compile(model) if job["backend"] == "torch-compile" else model
    dev = "cuda" if job["device_kind"] == "gpu" else "cpu"

    def attempt(rows: int) -> dict:
        batch = make_batch(rows)
        ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(dev)
        labels = torch.from_numpy(batch["labels"].astype(np.int64)).to(dev)
        mask = torch.ones_like(ids)

        def run():
            loss = fwd(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            if job["kind"] != "fwdbwd":  # fwdbwd: loss and gradients only
                opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())

        return {**timed_steps(run, "torch", job), "rows": rows, "labels": batch["labels"]}

    def cleanup():
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.empty_cache()

    return {**fit_rows(attempt, rows, cleanup), "attn_implementation": impl,
            "loss": "HF ModernBertForMaskedLM(labels=...), dense logits"}
