"""torch_files: the restricted unpickler refuses code before running any of it."""

from __future__ import annotations

import os

import torch
from conftest import hf_model
from convert_helpers import cli

from bcmb_jax.weights import torch_files


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"state": {"model": {"model.bert.final_norm.weight": torch.ones(4)}, "x": _Payload(marker)}}, bad)
    assert "posix.system" in torch_files.pickle_globals(bad) or "nt.system" in torch_files.pickle_globals(bad)
    assert cli("to-jax", bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused to unpickle" in err and "nothing in it was executed" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The same payload in an HF directory's pytorch_model.bin.
    hf_model("mlm").config.save_pretrained(tmp_path / "hf")
    torch.save({"model.final_norm.weight": torch.ones(64), "x": _Payload(marker)},
               tmp_path / "hf" / "pytorch_model.bin")
    assert cli("to-jax", tmp_path / "hf", tmp_path / "out") == 2
    assert "refused to unpickle" in capsys.readouterr().err and not marker.exists()


