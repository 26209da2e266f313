"""Source readers: every file format, bad input, invalid UTF-8 and empty documents."""

import gzip
import json

import pytest
from data_helpers import write_lines

from bcmb_jax.data.config import SourceConfig
from bcmb_jax.data.sources import ReadStats, expand_paths, iter_documents
from bcmb_jax.errors import DataError


def test_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("first document\nsecond line of it\n")
    (tmp_path / "txt" / "b.txt").write_bytes("bom doc".encode("utf-16"))  # UTF-16 with BOM
    (tmp_path / "txt" / ".hidden.txt").write_text("ignored")
    (tmp_path / "txt" / "skip.md").write_text("not matched by the pattern")
    write_lines(tmp_path / "l.txt", ["one", "  ", "two"])
    (tmp_path / "r.jsonl").write_text('{"t": "j1", "m": {"x": "nested"}}\n\n{"t": ["a", "b"], "m": {"x": "n2"}}\n'
                                      '"plain string record"\n')
    (tmp_path / "r.json").write_text(json.dumps([{"note": "rec 1"}, {"note": None}, {"note": "rec 3"}]))
    (tmp_path / "one.json").write_text(json.dumps({"note": "a single record", "day": 1}))
    (tmp_path / "h.csv").write_text('id,notes,other\n1,"multi\nline, with comma",x\n2,"say ""hi""",y\n')
    (tmp_path / "n.csv").write_text('0,zero,"first\nrow"\n1,one,"second"\n')
    (tmp_path / "t.tsv").write_text("id\ttext\n1\ttab one\n2\ttab two\n")
    pq.write_table(pa.table({"text": ["pq one", None, "pq three"], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write('{"text": "gzipped"}\n')
    (tmp_path / "x.TextGrid").write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 9\ntiers? <exists>\nsize = 2\n'
        'item []:\n    item [1]:\n        class = "IntervalTier"\n        name = "A"\n        intervals: size = 2\n'
        '        intervals [1]:\n            xmin = 0\n            xmax = 2\n            text = ""\n'
        '        intervals [2]:\n            xmin = 5\n            xmax = 6\n            text = "later ""quoted"""\n'
        '    item [2]:\n        class = "IntervalTier"\n        name = "B"\n        intervals: size = 1\n'
        '        intervals [1]:\n            xmin = 1\n            xmax = 2\n            text = "earlier\nline"\n')

    def read(**kw):
        st = ReadStats()
        return list(iter_documents(SourceConfig(**kw), st)), st

    assert read(paths=[str(tmp_path / "txt")], pattern="*.txt")[0] == ["first document\nsecond line of it",
                                                                       "bom doc"]
    docs, st = read(paths=[str(tmp_path / "l.txt")], format="lines")
    assert docs == ["one", "two"] and st.skipped_empty == 1 and st.docs == 2
    assert read(paths=[str(tmp_path / "r.jsonl")], field="t")[0] == ["j1", "a\nb", "plain string record"]
    assert read(paths=[str(tmp_path / "r.jsonl")], field="t,m.x")[0][:2] == ["j1", "nested"]
    docs, st = read(paths=[str(tmp_path / "r.json"), str(tmp_path / "one.json")], field="note")
    assert docs == ["rec 1", "rec 3", "a single record"] and st.skipped_empty == 1
    assert read(paths=[str(tmp_path / "h.csv")], field="notes")[0] == ["multi\nline, with comma", 'say "hi"']
    assert read(paths=[str(tmp_path / "h.csv")], field=["id", "other"])[0] == ["1", "x", "2", "y"]
    assert read(paths=[str(tmp_path / "n.csv")], csv_header=False, field=2)[0] == ["first\nrow", "second"]
    assert read(paths=[str(tmp_path / "t.tsv")])[0] == ["tab one", "tab two"]
    assert read(paths=[str(tmp_path / "p.parquet")])[0] == ["pq one", "pq three"]
    assert read(paths=[str(tmp_path / "z.jsonl.gz")])[0] == ["gzipped"]
    assert read(paths=[str(tmp_path / "*.TextGrid")])[0] == ['earlier\nline\nlater "quoted"']
    files = expand_paths(SourceConfig(paths=[str(tmp_path / "**" / "*.txt")]))
    assert [f.name for f in files] == ["l.txt", "a.txt", "b.txt"]


def test_bad_input_errors(tmp_path):
    def err(**kw):
        with pytest.raises(DataError) as e:
            list(iter_documents(SourceConfig(name="src", **kw)))
        return str(e.value)

    missing = tmp_path / "nope.txt"
    assert str(missing) in err(paths=[str(missing)]) and "not found" in err(paths=[str(missing)])
    assert "matches no files" in err(paths=[str(tmp_path / "*.zzz")])
    (tmp_path / "d").mkdir()
    assert "no files matching" in err(paths=[str(tmp_path / "d")])
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    msg = err(paths=[str(tmp_path / "c.csv")], field="text")
    assert "c.csv" in msg and "'text'" in msg and "['a', 'b']" in msg
    assert "needs a header" in err(paths=[str(tmp_path / "c.csv")], csv_header=False, field="a")
    (tmp_path / "short.csv").write_text("a,b\n1,2\n3\n")
    assert "short.csv:3" in err(paths=[str(tmp_path / "short.csv")], field="b")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    assert "bad.jsonl:2" in err(paths=[str(tmp_path / "bad.jsonl")])
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    assert "nofield.jsonl:2" in err(paths=[str(tmp_path / "nofield.jsonl")]) and "body" in err(
        paths=[str(tmp_path / "nofield.jsonl")])
    (tmp_path / "num.jsonl").write_text('{"text": 5}\n')
    assert "expected a string" in err(paths=[str(tmp_path / "num.jsonl")])
    assert "unknown format" in err(paths=[str(tmp_path / "c.csv")], format="xml")
    (tmp_path / "g.TextGrid").write_text("not praat")
    assert "TextGrid" in err(paths=[str(tmp_path / "g.TextGrid")])
    assert issubclass(DataError, ValueError)
    # invalid UTF-8 is replaced and counted; empty and whitespace-only documents are skipped and counted
    (tmp_path / "u.txt").write_bytes(b"w1 \xff\xfe w2\n\n   \nw3\n")
    st = ReadStats()
    docs = list(iter_documents(SourceConfig(paths=[str(tmp_path / "u.txt")], format="lines"), st))
    assert docs == ["w1 \ufffd\ufffd w2", "w3"] and st.replaced_utf8 == 2 and st.skipped_empty == 2
