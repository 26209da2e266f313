"""The PyTorch backend of `protocol.fit`: transformers Auto* models, the HF Trainer's optimizer set-up.

Any HF encoder directory works (ModernBERT exported from JAX, BERT, RoBERTa, Longformer, BigBird, ...),
so every row of the paper's Table 2 can be produced with one protocol. Per seed the model is reloaded
under `torch.manual_seed(seed)`; a ModernBERT classifier is then set to `protocol.head_init(seed)`, the
same weights the JAX backend starts from. Optimizer: `torch.optim.AdamW` over the Trainer's two groups
(`Trainer.get_decay_parameter_names`: no decay for LayerNorm weights and biases), the
`get_linear_schedule_with_warmup` schedule, `clip_grad_norm_`; batches are right-padded to their longest
example (DataCollatorWithPadding). Remote code is never run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.errors import FinetuneError
from bcmb_jax.evaluation.encoding import EncodedTask, Example
from bcmb_jax.evaluation.protocol import FinetuneConfig, head_init
from bcmb_jax.modeling.heads import HEADS, IGNORE


def hf_directory(model_path: str | Path, work_dir: Path) -> Path:
    """An HF directory for `model_path`: itself, or a JAX checkpoint / train run exported into work_dir."""
    from bcmb_jax.weights import directories, export

    where = directories.locate(model_path)
    if where.params is None:
        return Path(model_path)
    return export.to_hf(model_path, work_dir / "hf", progress=False).out


class TorchBackend:
    name = "torch"

    def __init__(self, hf_dir: str | Path, data: EncodedTask, cfg: FinetuneConfig, pad_id: int):
        import torch
        import transformers

        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        transformers.logging.set_verbosity_error()  # "newly initialized classifier" notices on every seed
        self.torch, self.tf = torch, transformers
        self.dir, self.kind, self.cfg, self.pad_id = str(hf_dir), data.kind, cfg, pad_id
        self.labels = data.labels
        try:
            self.config = transformers.AutoConfig.from_pretrained(self.dir, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise FinetuneError(f"{hf_dir}: not a transformers model directory ({e})") from None
        self.model = self.optimizer = self.scheduler = None

    def start(self, seed: int, lr: float, total_steps: int, warmup_steps: int) -> None:
        torch, tf = self.torch, self.tf
        auto = getattr(tf, HEADS["token" if self.kind == "ner" else "sequence"].auto_class)
        problem = {"classification": "single_label_classification", "multilabel": "multi_label_classification"}
        kw = {"problem_type": problem[self.kind]} if self.kind in problem else {}
        torch.manual_seed(seed)
        model = auto.from_pretrained(
            self.dir, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={n: i for i, n in enumerate(self.labels)}, ignore_mismatched_sizes=True,
            trust_remote_code=False, attn_implementation=self.cfg.attn_implementation, dtype=torch.float32, **kw)
        if self.config.model_type == "modernbert":
            w, b = head_init(seed, model.config.hidden_size, len(self.labels),
                             model.config.initializer_cutoff_factor)
            with torch.no_grad():
                model.classifier.weight.copy_(torch.from_numpy(w))
                model.classifier.bias.copy_(torch.from_numpy(b))
        decay = set(tf.Trainer.get_decay_parameter_names(None, model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps)
        self.scheduler = tf.get_linear_schedule_with_warmup(self.optimizer, warmup_steps, total_steps)
        self.model = model

    def _pad(self, batch: list[Example], labels: bool) -> dict[str, Any]:
        torch = self.torch
        n = max(len(e.ids) for e in batch)
        ids = np.full((len(batch), n), self.pad_id, np.int64)
        mask = np.zeros((len(batch), n), np.int64)
        for r, e in enumerate(batch):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if labels:
            if self.kind == "ner":
                y = np.full((len(batch), n), IGNORE, np.int64)
                for r, e in enumerate(batch):
                    y[r, :len(e.ids)] = e.token_labels
                out["labels"] = torch.from_numpy(y)
            elif self.kind == "classification":
                out["labels"] = torch.tensor([int(e.label) for e in batch], dtype=torch.long)
            else:
                out["labels"] = torch.from_numpy(np.stack([e.label for e in batch]).astype(np.float32))
        return out

    def train_step(self, batch: list[Example], lr: float) -> float:
        got = self.optimizer.param_groups[0]["lr"]
        if abs(got - lr) > 1e-9 * max(lr, 1e-12):
            raise RuntimeError(f"torch scheduler lr {got} differs from the protocol's {lr}")
        self.model.train()
        loss = self.model(**self._pad(batch, labels=True)).loss
        loss.backward()
        if self.cfg.clip_grad_norm:
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.model.zero_grad()
        return float(loss.detach())

    def predict(self, examples: list[Example]) -> list[np.ndarray]:
        """Batches of `eval_batch_size` examples of similar length (padding does not change the logits)."""
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
        out: list[np.ndarray | None] = [None] * len(examples)
        bs = self.cfg.eval_batch_size
        with self.torch.no_grad():
            for k in range(0, len(order), bs):
                idx = order[k:k + bs]
                logits = self.model(**self._pad([examples[i] for i in idx], labels=False)).logits.float().numpy()
                for r, i in enumerate(idx):
                    out[i] = logits[r, :len(examples[i].ids)] if self.kind == "ner" else logits[r]
        return out  # type: ignore[return-value]

    def snapshot(self) -> Any:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, snap: Any) -> None:
        self.model.load_state_dict(snap)
