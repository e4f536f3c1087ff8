"""planner.py: selections resolved to the exact series and instances; saved plans checked."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conquest_run.errors import JobError, PlanChangedError
from conquest_run.jobs import parse_job
from conquest_run.plan import Plan
from conquest_run.planner import build_plan, plan_selection
from conquest_run.savedplan import load_plan, save_plan, verify_plan

from _jobs_support import index, sandbox


@pytest.fixture
def sample(tmp_path):
    root = sandbox(tmp_path)
    data = root / "examples" / "sample" / "data"
    return index(data, root / "conquest.db")


def job(text: str):
    return parse_job("version: 1\n" + text, "j.yml")


def rows(arc, sql, params=()):
    conn = sqlite3.connect(arc.database)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_modality_selection_is_exact_ordered_and_sized(sample):
    plan = build_plan(job("select: {modality: RTPLAN}\naction: {copy: {destination: out}}"),
                      sample)
    step = plan.steps[0]
    expected = {r[0] for r in rows(sample, "select SeriesInst from DICOMSeries "
                                           "where Modality = 'RTPLAN'")}
    assert expected and {s.series_uid for s in step.series} == expected
    assert all(s.modality == "RTPLAN" for s in step.series)
    keys = [(s.patient_id or "", s.study_uid or "", s.series_uid) for s in step.series]
    assert keys == sorted(keys)
    for s in step.series:
        db_sops = {r[0] for r in rows(sample, "select SOPInstanc from DICOMImages "
                                              "where SeriesInst = ?", (s.series_uid,))}
        assert {i.sop_uid for i in s.instances} == db_sops
        assert [i.sop_uid for i in s.instances] == sorted(db_sops)
        for i in s.instances:
            assert i.size == os.path.getsize(sample.data_dir / i.path)
    assert (step.action, step.target, step.destructive, step.level) == \
        ("copy", "out", False, "series")
    assert plan.job_sha256 and plan.database == str(Path(sample.database).absolute())


def test_keys_narrow_each_other(sample):
    plan = build_plan(job('select: {patient: "PAT003", modality: [RTPLAN, RTDOSE]}\n'
                          "action: {dump: {file: x.csv}}"), sample)
    got = {(s.patient_id, s.modality) for s in plan.steps[0].series}
    assert got == {("PAT003", "RTPLAN"), ("PAT003", "RTDOSE")}
    expected = rows(sample, "select count(*) from DICOMSeries where SeriesPat = 'PAT003' "
                            "and Modality in ('RTPLAN', 'RTDOSE')")[0][0]
    assert len(plan.steps[0].series) == expected


def test_instance_level_query_keeps_only_the_named_instances(sample):
    plan = build_plan(job("select:\n  query: select SOPInstanc from DICOMImages where ImageNumbe = '1'\n"
                          "  modality: CT\naction: {copy: {destination: out}}"), sample)
    step = plan.steps[0]
    assert step.level == "instance" and step.series
    wanted = {r[0] for r in rows(sample, "select i.SOPInstanc from DICOMImages i join DICOMSeries s "
                                         "on s.SeriesInst = i.SeriesInst where i.ImageNumbe = '1' "
                                         "and s.Modality = 'CT'")}
    assert {i.sop_uid for s in step.series for i in s.instances} == wanted
    assert all(s.modality == "CT" for s in step.series)


def test_values_are_parameters_never_sql(sample):
    before = Path(sample.database).read_bytes()
    plan = build_plan(job("select: {patient: \"x' OR '1'='1\"}\naction: {delete: {files: false}}"),
                      sample)
    assert plan.steps[0].series == () and plan.steps[0].destructive
    assert Path(sample.database).read_bytes() == before


def test_send_node_is_resolved_into_the_target_and_options(sample):
    plan = build_plan(job("nodes:\n  tps: {host: 127.0.0.1, port: 11112, called_ae: TPS}\n"
                          "select: {modality: RTPLAN}\naction: {send: {node: tps, retries: 0}}"),
                      sample)
    step = plan.steps[0]
    assert step.target == "TPS@127.0.0.1:11112"
    assert step.options == {"node": "tps", "retries": 0, "host": "127.0.0.1", "port": 11112,
                            "called_ae": "TPS"}


def test_steps_dump_table_and_rebuild_need_no_selection(sample):
    plan = build_plan(job("steps:\n  - action: {dump: {file: p.csv, table: DICOMPatients}}\n"
                          "  - action: {rebuild: {only_missing: true}}\n"), sample)
    assert [s.series for s in plan.steps] == [(), ()]
    assert [s.line for s in plan.steps] == [3, 4]


def test_query_errors_found_at_plan_time_are_located(sample):
    # a query that is valid SQL but fails when run (e.g. a function SQLite lacks) is reported,
    # located in the job file, not as a traceback
    with pytest.raises(JobError) as info:
        build_plan(job("select:\n  query: select SeriesInst from DICOMSeries where SeriesDesc "
                       "regexp 'x'\naction: {copy: {destination: o}}"), sample)
    assert str(info.value).startswith("j.yml:3:10: the query failed")


def test_plan_selection_for_the_python_api(sample):
    plan = plan_selection(sample, {"modality": "RTSTRUCT"}, "copy", {"destination": "o"})
    assert len(plan.steps) == 1 and plan.steps[0].series
    assert all(s.modality == "RTSTRUCT" for s in plan.steps[0].series)
    everything = plan_selection(sample, None, "rebuild")
    assert everything.steps[0].series == ()


def test_saved_plan_round_trips_and_is_refused_when_the_archive_changed(sample, tmp_path):
    plan = build_plan(job("select: {modality: CT}\naction: {copy: {destination: out}}"), sample)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    again = load_plan(path)
    assert again == plan and isinstance(again, Plan)
    verify_plan(again, sample)          # unchanged: accepted

    series = plan.steps[0].series[0]
    conn = sqlite3.connect(sample.database)
    with conn:
        conn.execute("insert into DICOMImages (SOPInstanc, SeriesInst, ObjectFile) "
                     "values ('9.9.9', ?, 'x.dcm')", (series.series_uid,))
    conn.close()
    with pytest.raises(PlanChangedError, match=f"series {series.series_uid} .* gained 1 instance"):
        verify_plan(again, sample)

    conn = sqlite3.connect(sample.database)
    with conn:
        conn.execute("delete from DICOMImages where SOPInstanc in ('9.9.9', ?)",
                     (series.instances[0].sop_uid,))
    conn.close()
    with pytest.raises(PlanChangedError, match="lost 1 instance"):
        verify_plan(again, sample)


def test_a_plan_file_that_is_not_a_plan_is_refused(tmp_path):
    from conquest_run.errors import ConquestRunError
    bad = tmp_path / "p.json"
    bad.write_text('{"steps": [}')
    with pytest.raises(ConquestRunError, match=r"p.json:1:\d+: not a plan file"):
        load_plan(bad)
    bad.write_text('{"steps": []}')
    with pytest.raises(ConquestRunError, match="not a conquest-run plan file"):
        load_plan(bad)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xfd\xff")
    with pytest.raises(ConquestRunError, match="p.json: not a plan file .not UTF-8 text"):
        load_plan(bad)


def test_bulk_instance_reading_gives_the_same_plan(sample, monkeypatch):
    from conquest_run import planner
    j = job("select: {query: select SOPInstanc from DICOMImages where ImageNumbe <> '2'}\n"
            "action: {copy: {destination: out}}")
    one_by_one = build_plan(j, sample)
    monkeypatch.setattr(planner, "_BULK", 0)
    bulk = build_plan(j, sample)
    assert bulk.steps == one_by_one.steps and bulk.steps[0].series


def test_an_object_file_outside_the_data_directory_gets_no_size(sample, tmp_path):
    outside = Path(sample.data_dir).parent / "outside.dcm"
    outside.write_bytes(b"x" * 10)
    conn = sqlite3.connect(sample.database)
    with conn:
        uid = conn.execute("select SeriesInst from DICOMSeries where Modality = 'RTPLAN'").fetchone()[0]
        conn.execute("update DICOMImages set ObjectFile = '../outside.dcm' where SeriesInst = ?",
                     (uid,))
    conn.close()
    plan = build_plan(job(f"select: {{series: '{uid}'}}\naction: {{copy: {{destination: o}}}}"),
                      sample)
    [series] = plan.steps[0].series
    assert [i.path for i in series.instances] == ["../outside.dcm"]
    assert [i.size for i in series.instances] == [None]
