"""The offline demo corpus: generated (fictional) clinical notes and a byte-level BPE tokenizer.

Nothing here is real patient data: names, dates and findings are drawn from small built-in lists
with a seeded random generator, so the same seed always gives the same corpus and tokenizer.

    python -m bcmb_jax.data.demo_corpus OUT_DIR [--docs 3000] [--seed 0] [--vocab-size 4096]

writes OUT_DIR/clinical_notes.jsonl (one {"text", "type"} record per note, read by the data pipeline
with format auto and field "text") and OUT_DIR/tokenizer/ (loadable with
`transformers.AutoTokenizer.from_pretrained`).

`configs/demo.yaml` reads them from `runs/demo_data` under the working directory (`DEFAULT_DIR`);
`bcmb_jax.data` writes them there on first use (3000 notes, seed 0, vocabulary 4096), so
`train.py --config configs/demo.yaml` works in a fresh clone.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from bcmb_jax import cli
from bcmb_jax.atomic import atomic, write_text

DEFAULT_DIR = Path("runs") / "demo_data"  # relative to the working directory, as configs/demo.yaml reads it
CORPUS_FILE, TOKENIZER_DIR = "clinical_notes.jsonl", "tokenizer"
DEFAULTS = {"n_docs": 3000, "seed": 0, "vocab_size": 4096}  # what the first-use build writes
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")  # ids 0..4 in this order
NOTE_TYPES = ("history_and_physical", "discharge_summary", "progress_note", "radiology_report", "nursing_note")

FIRST = {"male": ("Boris", "Dmitri", "Felix", "Hollis", "Jasper", "Lionel", "Nestor", "Percy", "Silas", "Ulric",
                  "Wendell", "Zeke", "Anselm", "Casimir"),
         "female": ("Alma", "Celia", "Edna", "Greta", "Ines", "Kirsten", "Marisol", "Odile", "Rosalind", "Tamsin",
                    "Verena", "Yolanda", "Beatrix", "Philippa")}
LAST = ("Abernathy", "Baptiste", "Castellano", "Delacroix", "Eriksen", "Fairweather", "Galloway", "Hargreave",
        "Ibarra", "Jankowski", "Kowalczyk", "Lindqvist", "Marchetti", "Novak", "Okonkwo", "Pemberton",
        "Quintero", "Rasmussen", "Szabo", "Thornbury", "Underhill", "Valdivia", "Whitlock", "Yamada", "Zeller")
HISTORY = ("hypertension", "type 2 diabetes mellitus", "hyperlipidemia", "chronic kidney disease stage 3",
           "coronary artery disease", "atrial fibrillation", "COPD", "asthma", "obstructive sleep apnea",
           "hypothyroidism", "depression", "osteoarthritis", "GERD", "obesity", "prior DVT", "gout")
HOME_MEDS = ("lisinopril 10 mg daily", "metformin 1000 mg twice daily", "atorvastatin 40 mg nightly",
             "amlodipine 5 mg daily", "levothyroxine 75 mcg daily", "aspirin 81 mg daily",
             "omeprazole 20 mg daily", "sertraline 50 mg daily", "albuterol inhaler as needed",
             "apixaban 5 mg twice daily", "metoprolol succinate 50 mg daily", "allopurinol 100 mg daily")
ALLERGIES = ("no known drug allergies", "penicillin (rash)", "sulfa drugs (hives)", "codeine (nausea)",
             "iodinated contrast (itching)", "no known drug allergies", "latex")
SOCIAL = ("Lives with spouse, retired teacher. Former smoker, quit 10 years ago. Drinks alcohol socially.",
          "Lives alone in an apartment. Current smoker, 1 pack per day. Denies illicit drug use.",
          "Lives with daughter. Never smoker. No alcohol use. Uses a cane at baseline.",
          "Works as a truck driver. Smokes occasionally. Drinks 2-3 beers on weekends.",
          "Resides in assisted living. Independent with most ADLs. No tobacco or alcohol.")

# condition: (chief complaint, symptoms, exam finding, imaging finding, inpatient treatment, discharge plan)
CONDITIONS = {
    "community-acquired pneumonia": (
        "cough and fever", ("productive cough", "fevers", "pleuritic chest pain", "shortness of breath"),
        "crackles at the right lung base", "right lower lobe consolidation without effusion",
        ("ceftriaxone 1 g IV daily", "azithromycin 500 mg PO daily"),
        "complete a 5-day course of oral antibiotics"),
    "acute decompensated heart failure": (
        "worsening shortness of breath", ("dyspnea on exertion", "orthopnea", "bilateral leg swelling"),
        "jugular venous distension and 2+ pitting edema to the knees",
        "cardiomegaly with small bilateral pleural effusions and vascular congestion",
        ("furosemide 40 mg IV twice daily", "metoprolol succinate 25 mg daily"),
        "daily weights, 2 g sodium diet, and furosemide 40 mg PO daily"),
    "COPD exacerbation": (
        "shortness of breath", ("increased sputum production", "wheezing", "chest tightness"),
        "diffuse expiratory wheezes with prolonged expiration", "hyperinflated lungs without focal consolidation",
        ("prednisone 40 mg daily", "ipratropium-albuterol nebulizers every 4 hours"),
        "finish the prednisone taper and resume home inhalers"),
    "pyelonephritis": (
        "flank pain and fever", ("dysuria", "urinary frequency", "right flank pain", "chills"),
        "right costovertebral angle tenderness", "mild right perinephric stranding without hydronephrosis",
        ("ceftriaxone 1 g IV daily", "IV fluids"), "complete 10 days of oral cephalexin"),
    "cellulitis of the left lower extremity": (
        "leg redness and swelling", ("redness of the left shin", "warmth", "pain with walking"),
        "a 12 x 8 cm area of erythema and warmth on the left shin without fluctuance",
        "soft tissue swelling without subcutaneous gas", ("cefazolin 2 g IV every 8 hours",),
        "cephalexin 500 mg four times daily for 7 days and leg elevation"),
    "atrial fibrillation with rapid ventricular response": (
        "palpitations", ("palpitations", "lightheadedness", "fatigue"),
        "an irregularly irregular rhythm at a rate of 130", "no acute cardiopulmonary process",
        ("diltiazem infusion", "apixaban 5 mg twice daily"), "rate control with diltiazem and anticoagulation"),
    "diabetic ketoacidosis": (
        "nausea and vomiting", ("polyuria", "polydipsia", "abdominal pain", "vomiting"),
        "dry mucous membranes and Kussmaul respirations", "no acute abnormality",
        ("insulin infusion", "IV fluids with potassium repletion"),
        "basal-bolus insulin with diabetes education and endocrinology follow-up"),
    "upper gastrointestinal bleed": (
        "black stools", ("melena", "fatigue", "lightheadedness on standing"),
        "pale conjunctivae and epigastric tenderness", "no free air",
        ("pantoprazole 40 mg IV twice daily", "transfusion of 2 units of packed red blood cells"),
        "pantoprazole 40 mg twice daily for 8 weeks and avoidance of NSAIDs"),
    "acute ischemic stroke": (
        "right-sided weakness", ("right arm weakness", "slurred speech", "facial droop"),
        "right pronator drift and right lower facial weakness",
        "a small acute infarct in the left corona radiata without hemorrhage",
        ("aspirin 325 mg", "atorvastatin 80 mg nightly"), "outpatient physical and speech therapy"),
    "acute appendicitis": (
        "abdominal pain", ("periumbilical pain migrating to the right lower quadrant", "anorexia", "nausea"),
        "right lower quadrant tenderness with guarding", "a dilated appendix measuring 11 mm with periappendiceal "
        "fat stranding", ("piperacillin-tazobactam 4.5 g IV", "laparoscopic appendectomy"),
        "wound care and no heavy lifting for 2 weeks"),
    "pulmonary embolism": (
        "chest pain and shortness of breath", ("pleuritic chest pain", "dyspnea", "left calf swelling"),
        "tachycardia and a swollen, tender left calf", "filling defects in the right lower lobe segmental "
        "pulmonary arteries", ("heparin infusion",), "apixaban for at least 3 months"),
    "acute kidney injury": (
        "decreased urine output", ("poor oral intake", "fatigue", "decreased urination"),
        "dry mucous membranes and flat neck veins", "normal-sized kidneys without hydronephrosis",
        ("IV fluids", "holding lisinopril and metformin"), "repeat basic metabolic panel in one week"),
}
_CXR, _CT_AP = "Chest radiograph, PA and lateral", "CT abdomen and pelvis with contrast"
STUDY = {"community-acquired pneumonia": _CXR, "acute decompensated heart failure": "Chest radiograph, portable AP",
         "COPD exacerbation": _CXR, "pyelonephritis": _CT_AP,
         "cellulitis of the left lower extremity": "Left tibia and fibula radiographs, two views",
         "atrial fibrillation with rapid ventricular response": "Chest radiograph, portable AP",
         "diabetic ketoacidosis": _CXR, "upper gastrointestinal bleed": "Upright abdominal radiograph",
         "acute ischemic stroke": "MRI brain without contrast", "acute appendicitis": _CT_AP,
         "pulmonary embolism": "CT angiogram of the chest", "acute kidney injury": "Renal ultrasound"}


def _date(rng: random.Random) -> dt.date:
    return dt.date(2031, 1, 1) + dt.timedelta(days=rng.randrange(3 * 365))


def _patient(rng: random.Random) -> dict:
    cond, sex = rng.choice(sorted(CONDITIONS)), rng.choice(("male", "female"))
    return {"name": f"{rng.choice(FIRST[sex])} {rng.choice(LAST)}", "age": rng.randint(19, 94), "sex": sex,
            "cond": cond, "info": CONDITIONS[cond], "history": rng.sample(HISTORY, rng.randint(1, 4)),
            "meds": rng.sample(HOME_MEDS, rng.randint(1, 5)), "doctor": f"Dr. {rng.choice(LAST)}",
            "date": _date(rng), "mrn": rng.randrange(10**6, 10**7)}


def _vitals(rng: random.Random, sick: bool = True) -> str:
    o2 = rng.choice(("room air", "room air", "2 L nasal cannula", "4 L nasal cannula"))
    return (f"T {rng.uniform(36.4, 39.2 if sick else 37.4):.1f} C, HR {rng.randint(58, 124 if sick else 96)}, "
            f"BP {rng.randint(96, 172)}/{rng.randint(54, 98)}, RR {rng.randint(12, 26 if sick else 18)}, "
            f"SpO2 {rng.randint(88 if sick else 94, 100)}% on {o2}")


def _labs(rng: random.Random) -> str:
    return (f"WBC {rng.uniform(4.1, 18.5):.1f}, Hgb {rng.uniform(7.2, 15.8):.1f}, Plt {rng.randint(110, 420)}, "
            f"Na {rng.randint(129, 146)}, K {rng.uniform(3.1, 5.6):.1f}, Cl {rng.randint(95, 110)}, "
            f"HCO3 {rng.randint(14, 30)}, BUN {rng.randint(7, 58)}, Cr {rng.uniform(0.6, 3.4):.2f}, "
            f"glucose {rng.randint(72, 480)}")


def _who(p: dict) -> tuple[str, str, str]:
    """(He/She, his/her, 'a 64-year-old male')."""
    article = "an" if str(p["age"]).startswith("8") or p["age"] in (11, 18) else "a"
    pron = ("He", "his") if p["sex"] == "male" else ("She", "her")
    return *pron, f"{article} {p['age']}-year-old {p['sex']}"


def _history_and_physical(rng: random.Random, p: dict) -> str:
    cc, sx, exam, _, tx, _ = p["info"]
    he, his, who = _who(p)
    days = rng.choice(("2 days", "3 days", "1 week", "several hours", "4 days"))
    denies = rng.choice(("recent travel", "sick contacts", "chest pain", "hemoptysis", "syncope"))
    tried = rng.choice(("acetaminophen", "ibuprofen", "rest", "fluids"))
    family = rng.choice(("Mother with diabetes.", "Father died of myocardial infarction at 68.", "Noncontributory."))
    general = rng.choice(("ill-appearing", "in mild distress", "alert and oriented, no acute distress"))
    dvt = rng.choice(("enoxaparin 40 mg daily", "heparin 5000 units three times daily", "SCDs"))
    return "\n".join([
        "HISTORY AND PHYSICAL", f"Patient: {p['name']}   MRN: {p['mrn']}   Date: {p['date']:%m/%d/%Y}", "",
        f"CHIEF COMPLAINT: {cc.capitalize()}.", "",
        f"HISTORY OF PRESENT ILLNESS: {p['name'].split()[0]} is {who} with a history of {', '.join(p['history'])} "
        f"who presents with {days} of {', '.join(rng.sample(sx, min(len(sx), 3)))}. {he} denies {denies}. "
        f"{he} tried {tried} at home without relief. {his.capitalize()} "
        f"{rng.choice(('spouse', 'daughter', 'son', 'neighbor'))} brought {his} medication list.", "",
        f"PAST MEDICAL HISTORY: {'; '.join(p['history'])}.",
        f"MEDICATIONS: {'; '.join(p['meds'])}.", f"ALLERGIES: {rng.choice(ALLERGIES)}.",
        f"SOCIAL HISTORY: {rng.choice(SOCIAL)}", f"FAMILY HISTORY: {family}", "",
        f"PHYSICAL EXAMINATION: Vitals: {_vitals(rng)}.", f"General: {general}. Exam is notable for {exam}.", "",
        f"LABS: {_labs(rng)}.", "", f"ASSESSMENT AND PLAN: {who[0].upper()}{who[1:]} with {p['cond']}.",
        *(f"{i}. Start {t}." for i, t in enumerate(tx, 1)),
        f"{len(tx) + 1}. Continue home {rng.choice(p['meds'])}.", f"{len(tx) + 2}. DVT prophylaxis with {dvt}.",
        f"Code status: {rng.choice(('full code', 'full code', 'DNR/DNI'))}.", f"{p['doctor']}, MD"])


def _discharge_summary(rng: random.Random, p: dict) -> str:
    cc, _, _, img, tx, plan = p["info"]
    he, his, who = _who(p)
    stay = rng.randint(2, 9)
    course = rng.choice(("Symptoms improved steadily.", "Oxygen was weaned to room air by hospital day 3.",
                         "The course was complicated by transient hypotension that resolved with fluids."))
    ret = rng.choice(("fever over 38.5 C", "worsening shortness of breath", "chest pain", "bleeding"))
    return "\n".join([
        "DISCHARGE SUMMARY", f"Patient: {p['name']}   MRN: {p['mrn']}",
        f"Admission date: {p['date']:%m/%d/%Y}   Discharge date: {p['date'] + dt.timedelta(days=stay):%m/%d/%Y}",
        f"Attending: {p['doctor']}", "", f"PRINCIPAL DIAGNOSIS: {p['cond'].capitalize()}.",
        f"SECONDARY DIAGNOSES: {', '.join(p['history'])}.", "",
        f"HOSPITAL COURSE: The patient is {who} admitted with {cc}. Imaging showed {img}. "
        f"{he} was treated with {' and '.join(tx)}. {course} {he} was ambulating independently and tolerating "
        f"a regular diet at discharge. {his.capitalize()} home medications were resumed.", "",
        f"DISCHARGE MEDICATIONS: {'; '.join(p['meds'])}.", f"DISCHARGE INSTRUCTIONS: {plan.capitalize()}.",
        f"FOLLOW-UP: Primary care in {rng.choice(('1 week', '2 weeks', '7-10 days'))}; return for {ret}.",
        f"CONDITION AT DISCHARGE: {rng.choice(('Stable', 'Good', 'Improved'))}."])


def _progress_note(rng: random.Random, p: dict) -> str:
    _, sx, exam, _, tx, _ = p["info"]
    he, his, _ = _who(p)
    feels = rng.choice(("feeling better", "no change", "improved breathing", "less pain", "poor sleep"))
    trend = rng.choice(("improved from yesterday", "unchanged", "less pronounced"))
    todo = rng.choice(("Advance diet as tolerated.", "PT/OT evaluation.", "Anticipate discharge tomorrow.",
                       "Repeat labs in the morning."))
    return "\n".join([
        f"PROGRESS NOTE - Hospital day {rng.randint(2, 6)}", f"{p['name']}, {p['age']} {p['sex'][0].upper()}", "",
        f"S: {he} reports {feels}. {rng.choice(sx).capitalize()} is "
        f"{rng.choice(('improving', 'unchanged', 'resolved'))}; {his} appetite is {rng.choice(('fair', 'good'))}.",
        f"O: {_vitals(rng, sick=rng.random() < 0.4)}. Exam: {exam}, {trend}. Labs: {_labs(rng)}.",
        f"A: {p['cond'].capitalize()}, {rng.choice(('improving', 'stable', 'slowly improving'))}.",
        f"P: Continue {' and '.join(tx)}. {todo}", f"{p['doctor']}"])


def _radiology_report(rng: random.Random, p: dict) -> str:
    _, _, _, img, _, _ = p["info"]
    _, _, who = _who(p)
    extra = rng.choice(("No pneumothorax.", "Osseous structures are intact.", "No acute fracture.",
                        "Visualized soft tissues are unremarkable.", "Mild degenerative changes."))
    return "\n".join([
        f"EXAM: {STUDY[p['cond']]}", f"DATE: {p['date']:%m/%d/%Y}",
        f"INDICATION: {who[2:] if who.startswith('a ') else who[3:]} with {p['info'][0]}, "
        f"evaluate for {p['cond']}.",
        f"COMPARISON: {rng.choice(('None.', 'Prior study from 2 years ago.', 'Outside study, report only.'))}",
        f"TECHNIQUE: {rng.choice(('Standard protocol.', 'Images obtained after intravenous contrast.'))}",
        f"FINDINGS: The study demonstrates {img}. {extra}",
        f"IMPRESSION: {img[0].upper()}{img[1:]}, {rng.choice(('consistent with', 'suggestive of'))} "
        f"{p['cond']}.", f"Electronically signed by Dr. {rng.choice(LAST)}"])


def _nursing_note(rng: random.Random, p: dict) -> str:
    he, his, _ = _who(p)
    pick = rng.choice
    return "\n".join([
        f"NURSING NOTE ({pick(('0700-1900', '1900-0700'))})",
        f"Pt {p['name']}, {p['age']} y/o {p['sex']}, admitted for {p['cond']}.",
        f"Neuro: A&O x{pick((3, 3, 4, 2))}. {pick(('Calm and cooperative.', 'Intermittently anxious.'))}",
        f"Resp: {_vitals(rng, sick=False)}. {pick(('Lungs diminished at bases.', 'Breath sounds clear.'))}",
        f"Pain: {rng.randint(0, 8)}/10, {pick(('acetaminophen given with relief', 'declined PRN medication'))}.",
        f"GI/GU: {pick(('Tolerating diet.', 'NPO after midnight.', 'Voiding without difficulty.'))} "
        f"I/O {rng.randint(600, 2400)}/{rng.randint(400, 2600)} mL.",
        f"Skin: IV site {pick(('right forearm', 'left antecubital', 'left hand'))} clean, dry and intact.",
        f"Safety: {pick(('Fall precautions in place, bed alarm on.', 'Ambulated in hallway with assist x1.'))}",
        f"Plan: {pick(('Continue to monitor.', 'Notify MD for SBP < 90.', 'Family updated at bedside.'))} "
        f"{he} {pick(('verbalized understanding of', 'has questions about'))} {his} plan of care."])


_WRITERS = dict(zip(NOTE_TYPES, (_history_and_physical, _discharge_summary, _progress_note, _radiology_report,
                                 _nursing_note)))


def generate_notes(n_docs: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """Yields `n_docs` (note type, text) pairs; the same seed gives the same notes."""
    rng = random.Random(seed)
    for _ in range(n_docs):
        kind = rng.choice(NOTE_TYPES)
        yield kind, _WRITERS[kind](rng, _patient(rng))


def write_corpus(path: str | Path, n_docs: int = 3000, seed: int = 0) -> Path:
    """Writes the notes as JSONL records {"text", "type"} (atomically); returns the path."""
    path = Path(path)
    records = (json.dumps({"text": text, "type": kind}) + "\n" for kind, text in generate_notes(n_docs, seed))
    write_text(path, "".join(records))
    return path


def build_tokenizer(corpus_files: Iterable[str | Path], out_dir: str | Path, vocab_size: int = 4096,
                    min_frequency: int = 2, field: str = "text") -> dict[str, int]:
    """Trains a byte-level BPE on files `bcmb_jax.data` can read, saves a transformers-loadable tokenizer
    in `out_dir` and returns the special-token ids ([UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3, [MASK] 4).

    ModernBERT-style: NFC, byte-level BPE, `[CLS] $A [SEP]`, and a `[MASK]` that absorbs the space
    before it (lstrip). ModernBERT was pretrained with a leading space added to every document
    (`data.prefix_space`); this tokenizer adds that space itself, to the start of the text only
    (a Metaspace pre-tokenizer with prepend_scheme "first" whose replacement is the space), so a
    prompt's first word tokenizes as it does inside a note, and the text after a `[MASK]` gets no
    extra space (ByteLevel's add_prefix_space would add one after every added token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from bcmb_jax.data.config import SourceConfig
    from bcmb_jax.data.sources import iter_documents

    files = [str(f) for f in corpus_files]
    docs = iter_documents(SourceConfig(name="tokenizer", paths=files, field=field))
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=" ", prepend_scheme="first", split=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False, lstrip=t == "[MASK]") for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "mask_token": "[MASK]"}
    token_map = {k: {"content": v, "lstrip": v == "[MASK]", "normalized": False, "rstrip": False,
                     "single_word": False} for k, v in names.items()}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
           "model_input_names": ["input_ids", "attention_mask"], "clean_up_tokenization_spaces": False,
           **names, "added_tokens_decoder": {str(ids[v]): {**token_map[k], "special": True}
                                             for k, v in names.items()}}
    write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    write_text(out / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")
    write_text(out / "special_tokens_map.json", json.dumps(token_map, indent=2) + "\n")
    return ids


def ensure(out_dir: str | Path = DEFAULT_DIR, n_docs: int = DEFAULTS["n_docs"], seed: int = DEFAULTS["seed"],
           vocab_size: int = DEFAULTS["vocab_size"]) -> tuple[Path, Path]:
    """Writes whichever of `out_dir`/clinical_notes.jsonl and `out_dir`/tokenizer is missing (the same
    bytes every time for the same arguments); returns (corpus file, tokenizer directory). The tokenizer
    is built in a temporary sibling directory and renamed into place, so a reader never sees half of it."""
    out = Path(out_dir)
    corpus, tok_dir = out / CORPUS_FILE, out / TOKENIZER_DIR
    if not corpus.is_file():
        write_corpus(corpus, n_docs, seed)
    if not (tok_dir / "tokenizer.json").is_file():
        with atomic(tok_dir, overwrite=True, first_wins=True) as tmp:  # a concurrent build may finish first
            tmp.mkdir()
            build_tokenizer([corpus], tmp, vocab_size)
    return corpus, tok_dir


def ensure_default(path: str | Path) -> bool:
    """First use of the demo data: when `path` (a tokenizer directory or file a config names) is the
    default demo tokenizer, `runs/demo_data/tokenizer` under the working directory, and it or the corpus
    is missing, writes both there with the defaults. True if `path` is that location."""
    default = (Path.cwd() / DEFAULT_DIR / TOKENIZER_DIR).resolve()
    p = Path(path).expanduser().resolve()
    if p not in (default, default / "tokenizer.json"):
        return False
    ensure(DEFAULT_DIR)
    return True


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m bcmb_jax.data.demo_corpus",
                            description="Write the demo clinical-note corpus and its tokenizer.")
    ap.add_argument("out_dir")
    ap.add_argument("--docs", type=cli.count(), default=DEFAULTS["n_docs"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--vocab-size", type=cli.count(len(SPECIAL_TOKENS) + 256), default=DEFAULTS["vocab_size"])
    args = ap.parse_args(argv)
    corpus = write_corpus(Path(args.out_dir) / CORPUS_FILE, args.docs, args.seed)
    ids = build_tokenizer([corpus], Path(args.out_dir) / TOKENIZER_DIR, args.vocab_size)
    print(json.dumps({"corpus": str(corpus), "tokenizer": str(Path(args.out_dir) / TOKENIZER_DIR), **ids}))
    return 0


if __name__ == "__main__":
    cli.run(main)
