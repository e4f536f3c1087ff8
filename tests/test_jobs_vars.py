"""Job parameters: vars:, --var, --vars-file; bound in SQL, substituted safely elsewhere."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from conquest_run.cli import main
from conquest_run.errors import JobError
from conquest_run.jobs import parse_job
from conquest_run.jobvars import GivenValue, query_placeholders

JOB = """\
version: 1
vars:
  patient: {type: string, description: PatientID to export, pattern: "[A-Za-z0-9_]+"}
  since: {type: date, default: 2000-01-01}
  mods: {type: list, default: [RTPLAN, RTSTRUCT]}
archive: {data: data, database: conquest.db}
select:
  query: select SeriesInst from DICOMSeries where SeriesPat = :patient and SeriesDate >= :since
  modality: ${mods}
action:
  copy: {destination: "out/${patient}", layout: "${patient}/{Modality}/{SOPInstanc}.dcm"}
"""


def _write(tmp: Path, text: str, name: str = "job.yml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def _given(**kw) -> dict[str, GivenValue]:
    return {k: GivenValue(v, f"--var {k}") for k, v in kw.items()}


def test_values_are_typed_and_substituted():
    job = parse_job(JOB, "j.yml", _given(patient="RT001", since="2024-03-01"))
    assert job.variables == {"patient": "RT001", "since": "20240301",
                             "mods": ["RTPLAN", "RTSTRUCT"]}
    step = job.steps[0]
    assert step.select.modality == ("RTPLAN", "RTSTRUCT")
    assert step.options["destination"] == "out/RT001"
    assert step.options["layout"] == "RT001/{Modality}/{SOPInstanc}.dcm"
    # the SQL text keeps its parameters: values are bound, never pasted
    assert ":patient" in step.select.query and "RT001" not in step.select.query


def test_path_values_pass_through_safe_component():
    job = parse_job(JOB.replace('pattern: "[A-Za-z0-9_]+"', ""), "j.yml",
                    _given(patient="../../etc/{x}"))
    dest = job.steps[0].options["destination"]
    assert dest.count("/") == 1 and ".." not in dest.split("/")
    assert "{{x}}" in job.steps[0].options["layout"]     # braces cannot become template fields


@pytest.mark.parametrize("given, message", [
    ({}, "j.yml:3:3: variable patient has no value: give --var patient=VALUE "
         "(PatientID to export)"),
    ({"patient": "a b"}, "--var patient: variable patient 'a b' does not match the pattern"),
    ({"patient": "RT1", "since": "2024-13-01"}, "--var since: variable since must be a date"),
])
def test_missing_or_bad_values_are_located(given, message):
    with pytest.raises(JobError) as info:
        parse_job(JOB, "j.yml", _given(**given))
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_validate_checks_declarations_and_uses():
    text = """\
    version: 1
    vars:
      patient: {type: string}
      unused: {type: integer, default: "x"}
      many: {type: list}
    select:
      query: select SeriesInst from DICOMSeries where SeriesPat = :patinet or SeriesPat = :many
      patient: ${patient}
    action:
      copy: {destination: "out/${dest}"}
    """
    with pytest.raises(JobError) as info:
        parse_job(textwrap.dedent(text), "j.yml", validating=True)
    lines = str(info.value).splitlines()
    assert "j.yml:4:3: variable unused is declared but never used (write ${unused}, or :unused in select.query)" in lines
    assert any(line.startswith("j.yml:4:") and "vars.unused.default must be an integer" in line
               for line in lines)
    assert any(":patinet is not declared under vars: (did you mean patient?)" in line
               and line.startswith("j.yml:7:") for line in lines)
    assert any(":many is a list variable, which SQL cannot bind" in line for line in lines)
    assert any(line.startswith("j.yml:10:") and "${dest} is not declared" in line
               for line in lines)


def test_dollar_braces_in_sql_are_refused():
    text = JOB.replace("SeriesPat = :patient", "SeriesPat = '${patient}'")
    with pytest.raises(JobError, match="write :patient .a bound parameter., not"):
        parse_job(text, "j.yml", _given(patient="RT001"))


def test_placeholders_outside_strings_and_comments():
    sql = "select ':no' , x from t where a = :yes -- :nope\n and b = @two /* :not */"
    assert [n for n, _ in query_placeholders(sql)] == ["yes", "two"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_run_binds_records_and_plans(scratch, capsys):
    _write(scratch, JOB)
    code, out, err = _run(capsys, "--var", "patient=RT001", "--var", "mods=RTPLAN",
                          "--plan-out", "plan.json", "job.yml")
    assert code == 0, err
    assert "variables: patient=RT001, since=20000101, mods=RTPLAN" in out
    plan = json.loads(Path("plan.json").read_text())
    assert plan["variables"] == {"patient": "RT001", "since": "20000101", "mods": ["RTPLAN"]}
    assert {s["patient_id"] for s in plan["steps"][0]["series"]} == {"RT001"}
    code, out, err = _run(capsys, "--apply", "plan.json", "--var", "patient=PAT003")
    assert code == 2 and "a saved plan already holds the values" in err
    code, out, err = _run(capsys, "--apply", "plan.json")
    assert code == 0, err
    assert "variables: mods=RTPLAN, patient=RT001, since=20000101" in out
    assert sorted(p.parent.name for p in Path("out/RT001/RT001").rglob("*.dcm")) == ["RTPLAN"]
    with sqlite3.connect("conquest.db") as conn:
        (variables,) = conn.execute("select Variables from ConquestRunRuns").fetchone()
    assert json.loads(variables) == plan["variables"]


def test_cli_vars_file_and_unknown_var(scratch, capsys):
    _write(scratch, JOB)
    _write(scratch, "patient: PAT003\nsince: 1999-01-01\n", "vars.yml")
    code, out, err = _run(capsys, "--vars-file", "vars.yml", "--dry-run", "job.yml")
    assert code == 0, err
    assert "patient=PAT003, since=19990101" in out
    assert "relative paths are from the working directory (no conquest-run.yml found)" in out
    assert "archive: data directory data, database conquest.db" in out    # not "data data"
    _write(scratch, "patient: 12\n", "bad.yml")
    code, out, err = _run(capsys, "--vars-file", "bad.yml", "--validate", "job.yml")
    assert code == 2 and "bad.yml:1:10: variable patient must be a string; quote it" in err
    code, out, err = _run(capsys, "--var", "patinet=RT001", "--validate", "job.yml")
    assert code == 2
    assert "--var patinet: no job declares the variable patinet (did you mean patient?)" in err
    code, out, err = _run(capsys, "--var", "oops", "--validate", "job.yml")
    assert code == 2 and "write --var NAME=VALUE" in err
