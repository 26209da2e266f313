"""The DEID task: PhysioNet deid notes, silver labels from deid.pl's masks (the paper) or the gold PHI spans.

Tokenization, BIO tagging, label order and split follow the dataloader of the paper's code (arXiv 2506.10896).
"""

from __future__ import annotations

import re
from pathlib import Path

from sklearn.model_selection import train_test_split

from bcmb_jax.errors import ConfigError, TaskDataError
from bcmb_jax.evaluation.task_data import TaskData, encode_labels, err, read_lines, read_text

DEID_CATEGORIES = ("age", "date", "location", "name", "other", "phone_nb")
DEID_LABELS = ["O"] + [f"B-{c}" for c in DEID_CATEGORIES] + [f"I-{c}" for c in DEID_CATEGORIES]
# Gold PHI types of id-phi.phrase -> DEID categories.
DEID_GOLD_TYPES = {
    "HCPName": "name",
    "PTName": "name",
    "PTNameInitial": "name",
    "RelativeProxyName": "name",
    "Date": "date",
    "DateYear": "date",
    "Location": "location",
    "Phone": "phone_nb",
    "Age": "age",
    "Other": "other",
}


_RECORD = re.compile(r"START_OF_RECORD=(.*?)\|\|\|\|END_OF_RECORD", re.S)
_HEADER = re.compile(r"(\d+)\|\|\|\|(\d+)\|\|\|\|\n")
_MASK = re.compile(r"(\[\*\*.*?\*\*\])")


def read_deid_records(path: Path) -> list[tuple[str, str, str, int]]:
    """(patient id, record number, body, line) of each START_OF_RECORD=<pid>||||<rec>||||...||||END_OF_RECORD
    record; the body is the text after the START_OF_RECORD line (the offsets of id-phi.phrase)."""
    content = read_text(path)
    out = []
    for m in _RECORD.finditer(content):
        ln = content.count("\n", 0, m.start()) + 1
        h = _HEADER.match(m.group(1))
        if h is None:
            raise err(path, ln, "expected a record header 'START_OF_RECORD=<pid>||||<rec>||||' and a newline")
        out.append((h[1], h[2], m.group(1)[h.end() :], ln))
    if not out:
        raise err(path, None, "no START_OF_RECORD ... ||||END_OF_RECORD records")
    return out


def deid_mask_category(mask: str) -> str | None:
    """Category of a [**...**] mask, rules checked in the paper's order (None when no rule fits)."""
    content = mask[3:-3].strip()
    low = content.lower()
    if "name" in low:
        return "name"
    if "e-mail address" in low or "email address" in low:
        return "other"
    if "telephone/fax" in low or "pager number" in low:
        return "phone_nb"
    if "age over" in low:
        return "age"
    if "location" in low or any(k in low for k in ("hospital", "street address", "unit number")):
        return "location"
    if re.fullmatch(r"\d+|\d{1,2}-\d{1,2}|\d{4}-\d{2}-\d{2}", content) or "date range" in low or "month/year" in low:
        return "date"
    if content == "" or "company" in low:
        return "other"
    return None


def _silver_tags(text: str, masked: str, where: str) -> tuple[list[str], list[str]]:
    """The paper's alignment: plain segments of the masked text give O tokens; each mask covers id.text from
    the current position to where the next plain segment is found (or the end)."""
    text, masked = text.strip().replace("\n", " "), masked.strip().replace("\n", " ")
    segments = _MASK.split(masked)
    tokens, tags, pos = [], [], 0
    for i, seg in enumerate(segments):
        if i % 2 == 0:
            words = seg.split()
            tokens += words
            tags += ["O"] * len(words)
            pos += len(seg)
            continue
        cat = deid_mask_category(seg)
        if cat is None:
            raise TaskDataError(f"{where}: mask {seg!r} matches no DEID category {DEID_CATEGORIES}")
        nxt = segments[i + 1] if i + 1 < len(segments) else ""
        end = text.find(nxt, pos) if nxt else -1
        end = len(text) if end == -1 else end
        words = text[pos:end].split()
        tokens += words
        tags += [("B-" if k == 0 else "I-") + cat for k in range(len(words))]
        pos = end
    return tokens, tags


def _gold_spans(path: Path) -> dict[tuple[str, str], list[tuple[int, int, str, int]]]:
    """(start, end, category, line) of each PHI span of id-phi.phrase, by (patient, record)."""
    spans: dict[tuple[str, str], list[tuple[int, int, str, int]]] = {}
    for ln, line in read_lines(path):
        if not line.strip():
            continue
        c = line.split(maxsplit=5)
        if len(c) < 5 or not (c[2].isdigit() and c[3].isdigit()):
            raise err(path, ln, f"expected '<pid> <record> <start> <end> <type> <text>', got {line.rstrip()!r}")
        if int(c[2]) > int(c[3]):
            raise err(path, ln, f"span {c[2]}-{c[3]}: expected start <= end")
        if c[4] not in DEID_GOLD_TYPES:
            raise err(path, ln, f"PHI type {c[4]!r} is not one of {sorted(DEID_GOLD_TYPES)}")
        spans.setdefault((c[0], c[1]), []).append((int(c[2]), int(c[3]), DEID_GOLD_TYPES[c[4]], ln))
    return spans


def _gold_tags(body: str, spans: list[tuple[int, int, str, int]], path: Path) -> tuple[list[str], list[str]]:
    """Whitespace tokens of the text between and inside the gold spans (cut at span edges, like the silver
    masks); overlapping spans of one category are merged."""
    merged: list[list] = []
    for s, e, cat, ln in sorted(spans):
        if merged and s < merged[-1][1]:
            if cat != merged[-1][2]:
                raise err(path, ln, f"span {s}-{e} ({cat}) overlaps a {merged[-1][2]} span; expected overlapping "
                                    "gold spans to share a category")
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e, cat])
    tokens, tags, pos = [], [], 0
    for s, e, cat in merged + [[len(body), len(body), None]]:
        words = body[pos:s].split()
        tokens += words
        tags += ["O"] * len(words)
        words = body[s:e].split()
        tokens += words
        tags += [("B-" if k == 0 else "I-") + str(cat) for k in range(len(words))]
        pos = e
    return tokens, tags


def build_deid(data_dir: str | Path, labels: str = "silver") -> TaskData:
    """PhysioNet deid corpus: id.text records, whitespace tokens, split by record with sklearn
    train_test_split(test_size=0.30, random_state=42) then 50/50 (random_state=42) -> 1,703 / 365 / 366.

    labels="silver" (the paper): [**...**] masks of GSoutput/id.res (deid.pl output) aligned to id.text,
    categorized by `deid_mask_category`. labels="gold": the PHI spans of id-phi.phrase
    (`<pid> <record> <start> <end> <type> <text>`, offsets in the record body), types mapped by
    DEID_GOLD_TYPES.
    """
    d = Path(data_dir)
    text_path = d / "id.text"
    if not text_path.is_file():
        found = ", ".join(sorted(p.name for p in d.iterdir())[:4]) if d.is_dir() else "nothing"
        raise TaskDataError(f"{d}: not a deid data directory (no id.text; found {found} ...); expected the "
                            "PhysioNet deid corpus: id.text with GSoutput/id.res (silver) or id-phi.phrase (gold)")
    records = read_deid_records(text_path)
    examples = []
    if labels == "silver":
        res_path = next((p for p in (d / "GSoutput" / "id.res", d / "id.res") if p.is_file()), d / "id.res")
        masked = read_deid_records(res_path)
        if len(masked) != len(records):
            raise err(res_path, None, f"{len(masked)} records, but {text_path.name} has {len(records)}")
        for (pid, rec, body, ln), (pid2, rec2, body2, ln2) in zip(records, masked):
            if (pid, rec) != (pid2, rec2):
                raise err(res_path, ln2, f"record {pid2}/{rec2} where {text_path.name}:{ln} has {pid}/{rec}")
            tokens, tags = _silver_tags(body, body2, f"{res_path}:{ln2}")
            tags_ids = encode_labels(tags, DEID_LABELS, res_path, ln2)
            examples.append({"id": f"{pid}-{rec}", "tokens": tokens, "tags": tags_ids})
    elif labels == "gold":
        phrase = d / "id-phi.phrase"
        gold = _gold_spans(phrase)
        for pid, rec, body, _ in records:
            spans = gold.pop((pid, rec), [])
            for s, e, _, ln in spans:
                if e > len(body):
                    raise err(phrase, ln, f"span {s}-{e} runs past the end of record {pid}/{rec} ({len(body)} "
                                          "characters); expected offsets inside the record")
            tokens, tags = _gold_tags(body, spans, phrase)
            examples.append({"id": f"{pid}-{rec}", "tokens": tokens, "tags": encode_labels(tags, DEID_LABELS, phrase)})
        if gold:
            (pid, rec), rows = min(gold.items(), key=lambda kv: kv[1][0][3])
            raise err(phrase, rows[0][3], f"record {pid}/{rec} is not in {text_path.name}; expected spans of "
                                          "its records only")
    else:
        raise ConfigError(f"deid labels must be 'silver' or 'gold', got {labels!r}")
    train, rest = train_test_split(examples, test_size=0.30, random_state=42)
    val, test = train_test_split(rest, test_size=0.50, random_state=42)
    return TaskData("deid", "ner", list(DEID_LABELS), train, val, test)
