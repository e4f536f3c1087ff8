"""source.py: safe_load semantics with positions, duplicate keys, quote-it facts, SQL offsets."""

from __future__ import annotations

import datetime

import pytest
import yaml

from conquest_run.errors import JobError
from conquest_run.source import load_source, parse_source

TEXT = """\
# a comment
version: 1
base: &peer
  host: 127.0.0.1
  port: 104
nodes:
  a: *peer
  b:
    <<: *peer
    port: 11112
ids: [00123, "00123", 0x1F, 1.5, no, 2024-01-05, ~]
"""


def test_values_are_those_of_yaml_safe_load():
    assert parse_source(TEXT, "t.yml").data == yaml.safe_load(TEXT)


def test_positions_of_keys_and_values_are_one_based():
    src = parse_source(TEXT, "t.yml")
    assert (src.key_at(("version",)).line, src.key_at(("version",)).column) == (2, 1)
    assert (src.value_at(("version",)).line, src.value_at(("version",)).column) == (2, 10)
    assert (src.key_at(("nodes", "b", "port")).line, src.key_at(("nodes", "b", "port")).column) \
        == (10, 5)
    assert (src.value_at(("ids", 2)).line, src.value_at(("ids", 2)).column) == (11, 23)
    # an unknown path falls back to its closest known ancestor
    assert src.value_at(("nodes", "b", "nothing")) == src.value_at(("nodes", "b"))


def test_scalars_keep_their_original_text_and_resolved_tag():
    src = parse_source(TEXT, "t.yml")
    info = src.scalars[("ids", 0)]
    assert src.data["ids"][0] == 83            # YAML 1.1: a leading 0 is octal
    assert (info.text, info.tag, info.style) == ("00123", "tag:yaml.org,2002:int", None)
    assert src.scalars[("ids", 1)].style == '"' and src.data["ids"][1] == "00123"
    assert src.data["ids"][4] is False and src.scalars[("ids", 4)].text == "no"
    assert src.data["ids"][5] == datetime.date(2024, 1, 5)


def test_merge_keys_and_aliases_work_like_safe_load():
    src = parse_source(TEXT, "t.yml")
    assert src.data["nodes"]["a"] == {"host": "127.0.0.1", "port": 104}
    assert src.data["nodes"]["b"] == {"host": "127.0.0.1", "port": 11112}


@pytest.mark.parametrize("text, where, message", [
    ("a: 1\nb:\n  c: 1\n  c: 2\n", "t.yml:4:3", "duplicate key 'c' (first written at line 3, column 3)"),
    ("a: [1, 2\n", "t.yml:2:1", "YAML syntax error: expected ',' or ']'"),
    ("a: 1\n---\nb: 2\n", "t.yml:2:1",
     "YAML syntax error: expected a single document in the stream but found another document"),
    ("a: !!python/object:os.system x\n", "t.yml:1:4", "YAML syntax error: could not determine a constructor"),
    ("a: &x [*x]\n", "t.yml:1:4", "recursive alias"),
])
def test_yaml_errors_are_located(text, where, message):
    with pytest.raises(JobError) as info:
        parse_source(text, "t.yml")
    assert str(info.value).startswith(where + ": ")
    assert message in str(info.value)


def test_locate_in_scalar_maps_sql_offsets_into_the_file():
    text = ("q1: |\n"
            "  select a\n"
            "    from Nope\n"
            "q2: >-\n"
            "  select a\n"
            "  from Nope\n"
            "q3: 'it''s from Nope'\n"
            "q4: \"a \\\"b\\\" from Nope\"\n"
            "q5: select a\n"
            "  from Nope\n")
    src = parse_source(text, "t.yml")
    lines = text.splitlines()
    for key in ("q1", "q2", "q3", "q4", "q5"):
        value = src.data[key]
        pos = src.locate_in_scalar((key,), value, value.index("Nope"))
        assert lines[pos.line - 1][pos.column - 1:].startswith("Nope"), key


def test_load_source_hashes_the_bytes_and_reports_missing_files(tmp_path):
    import hashlib
    p = tmp_path / "j.yml"
    p.write_bytes(b"version: 1\n")
    src = load_source(p, display="jobs/j.yml")
    assert src.sha256 == hashlib.sha256(b"version: 1\n").hexdigest()
    assert src.path == "jobs/j.yml"
    with pytest.raises(JobError, match="job file not found"):
        load_source(tmp_path / "missing.yml")
    (tmp_path / "bin.yml").write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(JobError, match="not UTF-8"):
        load_source(tmp_path / "bin.yml")


def test_keys_written_beside_a_merge_keep_their_own_positions():
    text = "base: &b {port: 104, host: h}\nnode:\n  port: 11112\n  <<: *b\n"
    src = parse_source(text, "t.yml")
    assert src.data["node"] == {"port": 11112, "host": "h"}
    assert (src.key_at(("node", "port")).line, src.value_at(("node", "port")).column) == (3, 9)
    assert src.key_at(("node", "host")).line == 1      # merged: where the anchor wrote it
