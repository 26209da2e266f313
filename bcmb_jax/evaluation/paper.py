"""The numbers of the BioClinical ModernBERT paper (arXiv 2506.10896) that results are compared with.

Tables 2, 3, 5 and 6 and the fine-tuning protocol of §3.2.2 and Appendix B, copied from the paper; nothing
here is computed. `default_lr` is Table 5, the learning rate the authors selected per task and model size.
"""

from __future__ import annotations

TASKS = ("chemprot", "phenotype", "cos", "social_history", "deid")
TASK_TITLES = {"chemprot": "ChemProt", "phenotype": "Phenotype", "cos": "COS", "social_history": "Social History",
               "deid": "DEID"}

# Protocol (§3.2.2, Appendix B; the authors' sweep script): 10 epochs, batch 16, weight decay 1e-5, seeds
# 42-46, the median test score reported.
EPOCHS = 10
BATCH_SIZE = 16
WEIGHT_DECAY = 1e-5
SEEDS = (42, 43, 44, 45, 46)
# The hidden size of each model size the paper fine-tuned.
SIZES = {768: "base", 1024: "large"}
# Used for any other size (e.g. the small random models of tests and `--scale tiny`): the authors' code's
# CLI default (main.py --lr).
FALLBACK_LR = 2e-5

# Table 5: the learning rate selected per task and size.
TABLE5_LR: dict[tuple[str, str], float] = {
    ("chemprot", "base"): 5e-5, ("chemprot", "large"): 2e-5,
    ("phenotype", "base"): 8e-5, ("phenotype", "large"): 5e-5,
    ("cos", "base"): 1e-4, ("cos", "large"): 1.5e-4,
    ("social_history", "base"): 1.5e-4, ("social_history", "large"): 2e-4,
    ("deid", "base"): 7e-5, ("deid", "large"): 7e-5,
}

# Table 6: (classes or BIO entity tags incl. O, examples train/val/test, average tokens train/val/test).
# Tokens are counted with every word tokenized on its own without a prefix space, plus [CLS] and [SEP].
TABLE6: dict[str, tuple[int, tuple[int, int, int], tuple[float, float, float]]] = {
    "chemprot": (6, (19460, 11820, 16943), (68.2, 67.7, 75.2)),
    "phenotype": (14, (1589, 227, 454), (3112.2, 3118.7, 3175.8)),
    "cos": (11, (705, 151, 152), (24.5, 24.0, 23.4)),
    "social_history": (51, (254, 55, 55), (55.9, 57.0, 44.9)),
    "deid": (13, (1703, 365, 366), (276.6, 270.0, 281.5)),
}

# Table 2: median test score x 100 over 5 seeds (weighted F1 for ChemProt / Phenotype, entity F1 otherwise),
# in TASKS order.
TABLE2: dict[str, tuple[float, float, float, float, float]] = {
    "BioBERT": (89.5, 26.6, 94.9, 55.8, 74.3),
    "Clinical BERT": (88.3, 25.8, 95.0, 55.2, 74.2),
    "BioMed-RoBERTa": (89.0, 36.8, 94.9, 55.2, 81.1),
    "Clinical-BigBird": (87.4, 26.5, 94.0, 53.3, 71.2),
    "Clinical-Longformer": (74.2, 46.4, 95.2, 56.8, 82.3),
    "Clinical ModernBERT": (86.9, 54.9, 93.7, 53.8, 44.4),
    "ModernBERT-base": (89.5, 48.4, 94.0, 53.1, 78.3),
    "BioClinical ModernBERT-base": (89.9, 58.1, 95.1, 58.5, 82.7),
    "ModernBERT-large": (90.2, 58.3, 94.4, 54.8, 82.1),
    "BioClinical ModernBERT-large": (90.8, 60.8, 95.1, 57.1, 83.8),
}

# Table 3: inference throughput in thousand tokens/s on one A100 40GB (short/medium/long, fixed/variable).
TABLE3_SETS = ("short fixed", "short var", "medium fixed", "medium var", "long fixed", "long var")
TABLE3: dict[str, tuple[float | None, ...]] = {
    "ModernBERT-base / BioClinical-base": (76.2, 75.0, 73.8, 74.9, 71.1, 73.7),
    "ModernBERT-large / BioClinical-large": (25.8, 26.5, 25.3, 25.6, 24.8, 25.2),
}


def size_of(hidden_size: int | None) -> str | None:
    """"base" | "large" for the paper's sizes, None for any other hidden size."""
    return SIZES.get(int(hidden_size)) if hidden_size else None


def default_lr(task: str, size: str | None) -> tuple[float, str]:
    """(learning rate, where it came from): Table 5 for a paper task and size, else `FALLBACK_LR`."""
    lr = TABLE5_LR.get((task, size)) if size else None
    if lr is not None:
        return lr, f"paper Table 5 ({task}, {size})"
    why = f"no Table 5 entry for task {task!r}" if size else "model size is neither base nor large"
    return FALLBACK_LR, f"fallback {FALLBACK_LR:g} ({why})"


def table2_row(name: str) -> str | None:
    """The Table 2 row of a model name, matched ignoring case, spaces, '-' and '_' (None when absent)."""
    def norm(s: str) -> str:
        return "".join(c for c in s.lower() if c.isalnum())

    want = norm(name.rsplit("/", 1)[-1])
    return next((row for row in TABLE2 if norm(row) == want), None)
