"""Security hardening of job files, job SQL and `query` (issue 15): hostile input is refused
with a located message and a bounded cost, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conquest_run.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def alias_bomb(levels: int = 7, fan: int = 9) -> str:
    lines = ["version: 1", "name: t", 'a0: &a0 ["x"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]")
    lines += ["select: {modality: RTPLAN}", "action: {copy: {destination: out}}"]
    return "\n".join(lines) + "\n"


# -- YAML -------------------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_located_within_a_second(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bomb.yml").write_text(alias_bomb())
    started = time.monotonic()
    code, _, err = run_cli(capsys, "--validate", "bomb.yml")
    assert time.monotonic() - started < 1.0
    assert code == 2
    assert err.startswith("bomb.yml:") and "aliases" in err, err


def test_a_few_aliases_still_work(tmp_path):
    from conquest_run.source import parse_source
    src = parse_source("base: &b {x: 1, y: [1, 2, 3]}\none: *b\ntwo: *b\nthree: {<<: *b, x: 2}\n")
    assert src.data["two"] == {"x": 1, "y": [1, 2, 3]}
    assert src.data["three"] == {"x": 2, "y": [1, 2, 3]}


def test_a_control_character_in_a_job_file_is_a_located_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("esc.yml").write_text('version: 1\nname: "a\x1bb"\nselect: {modality: RTPLAN}\n'
                               "action: {copy: {destination: out}}\n")
    code, _, err = run_cli(capsys, "--validate", "esc.yml")
    assert code == 2
    assert err.startswith("esc.yml:2:9: ") and "U+001B" in err, err


# -- job SQL ----------------------------------------------------------------------------------------


def query_job(name: str, sql: str, action: str = "{copy: {destination: out}}") -> str:
    import json
    Path(name).write_text("version: 1\nname: t\narchive: {data: data, database: conquest.db}\n"
                          f"select:\n  query: {json.dumps(sql)}\naction: {action}\n")
    return name


def test_four_hundred_nested_parentheses_are_a_located_error(scratch, capsys):
    query_job("paren.yml", "select SeriesInst from DICOMSeries where "
              + "(" * 400 + "1" + ")" * 400)
    code, _, err = run_cli(capsys, "--validate", "paren.yml")
    assert code == 2
    assert err.startswith("paren.yml:5:") and "parentheses" in err, err


def test_a_recursive_cte_is_refused_before_it_runs(scratch, capsys):
    query_job("rec.yml", "with recursive c as (select 1 as x union all select x + 1 from c) "
                         "select SeriesInst from DICOMSeries, c")
    started = time.monotonic()
    code, _, err = run_cli(capsys, "--dry-run", "rec.yml")
    assert time.monotonic() - started < 10
    assert code == 2
    assert err.startswith("rec.yml:5:") and "recursive CTE c" in err, err


def test_a_recursive_cte_with_a_small_literal_limit_runs(scratch, capsys):
    query_job("rec.yml", "with recursive c as (select 1 as x union all select x + 1 from c "
                         "limit 5) select SeriesInst from DICOMSeries, c where x = 3 and "
                         "Modality = 'RTPLAN'")
    code, out, err = run_cli(capsys, "--dry-run", "rec.yml")
    assert code == 0, err
    assert "4 series" in out


@pytest.mark.parametrize("sql", [
    "select SeriesInst, printf('%.*c', 50000000, 'x') from DICOMSeries",
    "select SeriesInst, printf('%50000000c', 'x') from DICOMSeries",
    "select SeriesInst, format(SeriesDesc, 'x') from DICOMSeries",
])
def test_printf_padding_is_refused(scratch, capsys, sql):
    query_job("pf.yml", sql)
    code, _, err = run_cli(capsys, "--validate", "pf.yml")
    assert code == 2
    assert err.startswith("pf.yml:5:") and ("width" in err or "literal" in err), err


def test_a_self_join_explosion_stops_at_the_query_timeout(scratch, capsys):
    query_job("join.yml", "select a.SeriesInst from DICOMImages a, DICOMImages b, "
                          "DICOMImages c, DICOMImages d, DICOMImages e")
    started = time.monotonic()
    code, _, err = run_cli(capsys, "--dry-run", "--query-timeout", "1", "join.yml")
    assert time.monotonic() - started < 15
    assert code == 2
    assert "join.yml:5:" in err and "longer than 1 s (--query-timeout)" in err, err


def test_a_value_larger_than_the_reader_cap_fails_clearly(tmp_path):
    from conquest_run import db
    from conquest_run.schema import load_schema
    from conquest_run.sqlcheck import check_query, run_query
    from conquest_run.errors import SqlCheckError
    schema = load_schema()
    conn = db.connect(tmp_path / "c.db")
    db.ensure_schema(conn, schema)
    conn.execute("INSERT INTO DICOMSeries (SeriesInst) VALUES ('1.2')")
    conn.close()
    grow = "SeriesInst"
    for _ in range(23):                      # each replace doubles the 1s: 2**23 > the cap
        grow = f"replace({grow}, '1', '11')"
    checked = check_query(f"select SeriesInst, {grow} from DICOMSeries", schema)
    started = time.monotonic()
    with pytest.raises(SqlCheckError, match="too big"):
        run_query(db.connect_readonly(tmp_path / "c.db"), checked)
    assert time.monotonic() - started < 5


def test_the_query_timeout_option_is_checked(scratch, capsys):
    query_job("ok.yml", "select SeriesInst from DICOMSeries")
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--query-timeout", "0", "ok.yml"])
    assert exc.value.code == 2
    assert "must be more than 0" in capsys.readouterr().err


# -- query and --apply -------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", ["ATTACH 'elsewhere.db' AS e", "VACUUM INTO 'elsewhere.db'"])
def test_query_creates_no_file_and_is_refused(scratch, capsys, sql):
    assert run_cli(capsys, "rebuild")[0] == 0
    before = sorted(p.name for p in scratch.iterdir())
    code, _, err = run_cli(capsys, "query", sql)
    assert code == 2
    assert err.startswith("SQL:1:1: only a read-only query (SELECT)"), err
    assert sorted(p.name for p in scratch.iterdir()) == before


def test_query_reads_only_the_archive_tables_and_any_columns(scratch, capsys):
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, _ = run_cli(capsys, "query", "select count(*) as n from DICOMPatients where "
                           "PatientID like ?", "--param", "%", "--no-header")
    assert code == 0 and int(out.strip()) > 0
    code, _, err = run_cli(capsys, "query", "select name from sqlite_master")
    assert code == 2 and "unknown table sqlite_master" in err


def _dump_plan(capsys) -> dict:
    import json
    query_job("dump.yml", "select SeriesInst, Modality from DICOMSeries",
              "{dump: {file: out/series.csv}}")
    code, _, err = run_cli(capsys, "--plan-out", "plan.json", "dump.yml")
    assert code == 0, err
    return json.loads(Path("plan.json").read_text())


def test_apply_checks_the_sql_of_a_hand_edited_plan(scratch, capsys):
    import json
    plan = _dump_plan(capsys)
    plan["steps"][0]["query"] = "select name as SeriesInst, sql from sqlite_master"
    Path("plan.json").write_text(json.dumps(plan))
    code, _, err = run_cli(capsys, "--apply", "plan.json")
    assert code == 2
    assert err.startswith("plan.json: step 1") and "sqlite_master" in err, err
    assert not Path("out/series.csv").exists()


def test_apply_refuses_params_that_are_not_a_list(scratch, capsys):
    import json
    plan = _dump_plan(capsys)
    plan["steps"][0]["options"]["params"] = 5
    Path("plan.json").write_text(json.dumps(plan))
    code, _, err = run_cli(capsys, "--apply", "plan.json")
    assert code == 2
    assert err.startswith("plan.json: ") and "params: must be a list" in err, err


# -- copy never writes into the archive ---------------------------------------------------------------
def _series_desc_job(layout: str, destination: str = ".", archive: bool = True) -> str:
    Path("copy.yml").write_text(
        "version: 1\nname: t\n"
        + ("archive: {data: data, database: conquest.db}\n" if archive else "")
        + "select: {modality: RTPLAN}\n"
        f"action: {{copy: {{destination: {destination!r}, layout: {layout!r}, "
        "overwrite: if_different}}\n")
    return "copy.yml"


def _name_a_series_conquest_db(scratch, capsys) -> None:
    import sqlite3
    assert run_cli(capsys, "rebuild")[0] == 0
    conn = sqlite3.connect("conquest.db")
    with conn:
        conn.execute("UPDATE DICOMSeries SET SeriesDesc = 'conquest.db' WHERE SeriesInst = "
                     "(SELECT min(SeriesInst) FROM DICOMSeries WHERE Modality = 'RTPLAN')")
    conn.close()


@pytest.mark.parametrize("layout", ["{SeriesDesc}", "data/{PatientID}/copy-{SOPInstanc}.dcm"])
@pytest.mark.parametrize("dry", [False, True])
def test_a_copy_into_the_archive_is_refused_and_changes_nothing(scratch, capsys, layout, dry):
    from _jobs_support import tree_state
    _name_a_series_conquest_db(scratch, capsys)
    job = _series_desc_job(layout, archive=False)     # the archive named on the command line
    before = tree_state(scratch)
    code, out, err = run_cli(capsys, *(["--dry-run"] if dry else []), "--data", "data",
                             "--database", "conquest.db", job)
    assert code == 1, out + err
    assert "contains the archive's" in out, out
    after = tree_state(scratch)
    # a real run writes its audit rows into the database; the files themselves stay
    assert {k: v for k, v in after.items() if not k.startswith("conquest.db")} == \
        {k: v for k, v in before.items() if not k.startswith("conquest.db")}
    import sqlite3
    assert sqlite3.connect("conquest.db").execute("select count(*) from DICOMSeries").fetchone()[0]


def test_validate_refuses_a_destination_that_contains_the_archive(scratch, capsys):
    job = _series_desc_job("{SeriesDesc}")
    code, _, err = run_cli(capsys, "--validate", job)
    assert code == 2
    assert err.startswith("copy.yml:5:") and "contains the archive's data directory" in err, err
    _series_desc_job("patient", destination="data/exports")
    code, _, err = run_cli(capsys, "--validate", job)
    assert code == 2 and "inside the archive's data directory" in err, err
