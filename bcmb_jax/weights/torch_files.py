"""Reading PyTorch files without running code from them: the one restricted unpickler.

`safe_load` lists a `torch.save` zip's pickle globals statically (`pickletools`), refuses anything
outside a short allow-list before a byte is unpickled, then unpickles with
`torch.load(weights_only=True)`, where the allowed non-tensor objects are numpy arrays/scalars
(RNG states), `datetime` values (timestamps) and plain containers. Objects of training-loop
packages (composer, torchmetrics, omegaconf, ...) are rebuilt as inert placeholders that only
hold their data. HF `pytorch_model.bin` files and Composer checkpoints are both read with it.
"""

from __future__ import annotations

import datetime
import pickletools
import re
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bcmb_jax.errors import WeightsError

# Packages whose objects (enums, small state holders) may appear in a training checkpoint but are
# not needed here: they are rebuilt as `Inert` placeholders, never imported or run.
INERT_PACKAGES = ("composer", "torchmetrics", "omegaconf", "streaming", "src", "transformers", "tokenizers",
                  "optimi")


class Inert:
    """Stands in for an object of a class this tool does not need: keeps the pickled data, runs nothing."""

    pickle_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickle_name}>"


def _real_globals() -> dict[str, Any]:
    """Pickle globals rebuilt for real: value constructors that cannot run other code."""
    from numpy._core import multiarray

    out: dict[str, Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x pickles
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    out["numpy.ndarray"] = np.ndarray
    out["numpy.dtype"] = np.dtype
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    for name in ("timedelta", "datetime", "date", "time", "timezone"):
        out[f"datetime.{name}"] = getattr(datetime, name)
    out["collections.defaultdict"] = defaultdict
    for t in (list, dict, tuple, set, frozenset, int, float, bool, str):
        out[f"builtins.{t.__name__}"] = t
    return out


def pickle_globals(path: Path) -> set[str]:
    """The `module.name` globals a torch zip checkpoint's pickle refers to, read without unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not names:
                raise WeightsError(f"{path}: a zip file, but not a torch.save checkpoint (no data.pkl)")
            data = zf.read(names[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise WeightsError(f"{path}: cannot read PyTorch checkpoint ({e}); truncated or corrupt?") from None
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    found, ops = set(), set()
    try:
        for op, arg, _ in pickletools.genops(data):
            ops.add(op.name)
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
                found.add(f"{module}.{name}")
    except (ValueError, EOFError) as e:  # pickletools reports damage as ValueError
        raise WeightsError(f"{path}: damaged pickle in the checkpoint ({e}); truncated or corrupt?") from None
    for op in ("STACK_GLOBAL", "INST", "OBJ"):
        if op in ops:
            raise WeightsError(f"{path}: the pickle uses the {op} opcode, which the safe loader does not accept "
                                 "(torch.save writes pickle protocol 2); nothing in it was executed")
    return found


def safe_load(path: str | Path) -> Any:
    """Unpickles a `torch.save` zip checkpoint without running code from it (tensors on the CPU, mmapped).

    Globals torch itself allows (tensors, storages, OrderedDict) and `_real_globals` are rebuilt;
    those of `INERT_PACKAGES` become `Inert` placeholders; any other global (a function such as
    `os.system`, an unknown class) makes the whole file refused before anything is unpickled.
    """
    import torch
    from torch import _weights_only_unpickler as wou

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a PyTorch zip checkpoint (truncated or corrupt, or a legacy format)")
    torch_ok = set(wou._get_allowed_globals())
    real = _real_globals()
    # All of `real`, found or not: objects are rebuilt only if their type is allowed (numpy dtype classes).
    allowed: list[tuple[Any, str]] = [(obj, name) for name, obj in real.items()]
    refused = []
    for g in sorted(pickle_globals(path) - torch_ok - set(real)):
        if g.split(".", 1)[0] in INERT_PACKAGES:
            allowed.append((type("Inert_" + g.replace(".", "_"), (Inert,), {"pickle_name": g}), g))
        else:
            refused.append(g)
    if refused:
        raise WeightsError(f"{path}: refused to unpickle: it refers to {', '.join(refused)}, outside the "
                             "allow-list (tensors, numpy arrays, datetime values, plain containers, inert "
                             f"placeholders for {'/'.join(INERT_PACKAGES)} objects); nothing in it was executed")
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except wou.UnpicklingError as e:
        raise WeightsError(f"{path}: {refusal(str(e))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())[:300]
        raise WeightsError(f"{path}: cannot read PyTorch checkpoint ({msg}); truncated or corrupt?") from None


def refusal(torch_message: str) -> str:
    """Why a `weights_only` load was refused: the globals the pickle asked for, not torch's advice to turn
    the check off."""
    found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", torch_message)))
    what = f"it asks for {', '.join(found)}" if found else "it asks for objects"
    return (f"refused to unpickle: {what}, outside the safe allow-list (tensors and plain containers); "
            "nothing in it was executed")


def is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def torch_to_numpy(t) -> np.ndarray:
    """Bit-exact tensor -> numpy (bfloat16 via ml_dtypes)."""
    import ml_dtypes
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a pickled state dict (an HF `pytorch_model.bin`), as numpy arrays."""
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {k: torch_to_numpy(v) for k, v in obj.items() if is_tensor(v)}


__all__ = ["safe_load", "pickle_globals", "load_tensors", "torch_to_numpy", "is_tensor", "Inert", "INERT_PACKAGES"]
