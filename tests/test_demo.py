"""demo.py: the held-out fill-mask cases (the word masked in its note) and the choice of shown cases."""

from __future__ import annotations

import demo


def test_the_last_word_of_each_sentence_is_masked_in_its_note():
    note = "NURSING NOTE\nSkin: IV site left hand clean, dry and intact.\nPlan: Continue to monitor. Pt calm.\n\nEnd"
    cases = demo.masked_sentences(["Ignored text.", note], n_tokens=lambda s: 1 if s != " calm" else 2)
    # a heading counts as a sentence; " calm" is two tokens: not a case
    assert [c.word for c in cases] == ["text", "NOTE", "intact", "monitor"]
    skin = cases[2]
    assert skin.shown == "Skin: IV site left hand clean, dry and [MASK]."
    assert skin.masked == note.replace("intact", "[MASK]") and skin.text == 1
    assert cases[3].masked == note.replace("monitor.", "[MASK].")
    assert demo.shown_cases(cases, real=False) == [skin]  # the first sentence for each opening found
    assert demo.shown_cases(cases, real=True) == [cases[0], cases[1]]  # the first sentence of each text


def test_the_same_word_earlier_in_the_note_is_left_alone():
    note = "Breath sounds clear and intact. Skin: IV site clean, dry and intact."
    cases = demo.masked_sentences([note], n_tokens=lambda s: 1)
    assert [c.masked for c in cases] == ["Breath sounds clear and [MASK]. Skin: IV site clean, dry and intact.",
                                         "Breath sounds clear and intact. Skin: IV site clean, dry and [MASK]."]


def test_any_number_of_steps_gives_a_valid_schedule_and_a_loss_curve():
    from bcmb_jax.runconfig import load
    from bcmb_jax.training.config import TrainConfig

    base = load(TrainConfig, "configs/demo.yaml")
    for steps in (1, 2, 5, 30, 600, 5000):
        cfg = load(TrainConfig, "configs/demo.yaml", demo.steps_overrides(base, steps))  # refused before
        assert cfg.max_steps == cfg.schedule.total == steps
        assert steps == 1 or steps // cfg.log_every >= 2  # at least two logged losses to compare
