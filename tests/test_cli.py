"""cli.py: the one error path. Input errors and library errors about a file become one `error:` line
naming it (exit 2), Ctrl-C exits 130, and a bug keeps its traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_a_bug_keeps_its_traceback():
    from bcmb_jax import cli

    @cli.command
    def main(argv):
        return {}["no such key"]

    with pytest.raises(KeyError):
        main([])
    assert cli.error_line(ZeroDivisionError()) is None


def test_library_errors_name_the_file(tmp_path, capsys):
    """JSON, decoding, YAML, OS and safetensors errors become one line naming the file the code was reading."""
    import yaml
    from safetensors.numpy import load_file

    from bcmb_jax import cli

    bad_json, latin, bad_yaml, short = (tmp_path / n for n in ("c.json", "notes.txt", "c.yaml", "w.safetensors"))
    bad_json.write_text('{\n  "a": 1,\n}\n')
    latin.write_bytes(b"ok\nfi\xe8vre\n")
    bad_yaml.write_text("a: [1, 2\nb: 3\n")
    short.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")

    def read(path: Path):
        if path.suffix == ".json":
            return json.loads(path.read_text())
        if path.suffix == ".yaml":
            with path.open() as f:
                return yaml.safe_load(f)
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return path.read_text(encoding="utf-8")

    @cli.command
    def main(argv):
        read(Path(argv[0]))
        return 0

    expect = {bad_json: f"{bad_json}:3: invalid JSON", latin: f"{latin}:2: not valid utf-8 text (byte 0xe8",
              bad_yaml: f"{bad_yaml}:2: invalid YAML", short: f"{short}: ",
              tmp_path / "none.json": f"{tmp_path / 'none.json'}: No such file or directory"}
    for path, start in expect.items():
        assert main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: " + start) and err.count("\n") == 1, err

    @cli.command
    def interrupted(argv):
        raise KeyboardInterrupt

    assert interrupted([]) == 130 and capsys.readouterr().err.startswith("error: interrupted")



BACKGROUND_FAILURE = """
import asyncio
from bcmb_jax import cli
from bcmb_jax.errors import InputError

@cli.command
def main(argv):
    async def read():
        raise ValueError("a background read failed\\nwith a long, multi-line spec")
    loop = asyncio.new_event_loop()
    task = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0.01))
    cycle = [task]
    cycle.append(cycle)  # like orbax's: freed by the collector after the error line, its exception never retrieved
    raise InputError("weights/params: no readable orbax checkpoint metadata; truncated or corrupt?")

cli.run(main)
"""


@pytest.mark.parametrize("debug", [False, True])
def test_the_error_line_is_all_of_stderr_even_with_failed_background_tasks(debug):
    """A failed orbax read leaves asyncio tasks that log their exceptions when collected at shutdown;
    nothing follows the error line (with --debug the log stays)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", BACKGROUND_FAILURE, *(["--debug"] if debug else [])], cwd=root,
                         capture_output=True, text=True, timeout=120)
    line = "error: weights/params: no readable orbax checkpoint metadata; truncated or corrupt?\n"
    assert run.returncode == 2
    if debug:
        assert line in run.stderr and "Task exception was never retrieved" in run.stderr
    else:
        assert run.stderr == line


SIGNAL_IN_A_CALLBACK = """
import os, signal, time, weakref
from bcmb_jax import cli

class Box:
    pass

@cli.command
def main(argv):
    box = Box()
    ref = weakref.ref(box, lambda r: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))
    del box  # the callback runs now, and Ctrl-C lands inside it, where an exception is only printed
    for _ in range(300):
        time.sleep(0.01)
    return 0

cli.run(main)
"""


def test_ctrl_c_inside_a_weakref_callback_still_interrupts():
    """A signal whose exception a callback swallows is sent again: exit 130 and one line, no 'Exception ignored'."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_CALLBACK], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 130, run.stderr
    assert run.stderr == "error: interrupted (SIGINT / Ctrl-C); partial output was removed\n"
