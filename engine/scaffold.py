"""What ``conquest-run init`` writes: a job repository's files, as text (each example job passes
``--validate``; the tests check it)."""

from __future__ import annotations

__all__ = ["scaffold_files"]

PROJECT = """\
# yaml-language-server: $schema=schemas/project.schema.json
#
# The project file: what every job under jobs/ shares.  A job inherits archive: and nodes:
# and may override them.  Relative paths are from this file's folder, whatever the working
# directory.
version: 1
name: {name}
archive:
  data: data                 # the data/<PatientID>/ tree
  database: conquest.db      # its SQLite index (conquest-run rebuild creates it)
  # dicom_sql: dicom.sql     # the Conquest table layout (default: ./dicom.sql, else built-in)
nodes:
  pacs:                      # send: {{node: pacs}} in any job
    host: 127.0.0.1
    port: 11112
    called_ae: PACS
    calling_ae: CONQUEST_RUN
"""

HEADER = """\
# yaml-language-server: $schema=../schemas/job.schema.json
#
"""

JOBS = {
    "export_patient.yml": """\
# Copy one patient's RT objects to exports/<patient>/, one folder per series, with a manifest.
#
#   conquest-run show jobs/export_patient.yml
#   conquest-run --dry-run --var patient=RT001 jobs/export_patient.yml
#   conquest-run --var patient=RT001 jobs/export_patient.yml
version: 1
name: export-patient
description: One patient's RT structure sets, plans and doses, for review
vars:
  patient:
    type: string
    description: the PatientID to export
    pattern: "[A-Za-z0-9._^-]+"
select:
  patient: ${patient}                 # a value: never pasted into SQL
  modality: [RTSTRUCT, RTPLAN, RTDOSE]
action:
  copy:
    destination: exports/${patient}   # made a safe folder name
    layout: series                    # or a template: "{Modality}/{SOPInstanc}.dcm"
    manifest: json
""",
    "dump_recent_plans.yml": """\
# A CSV of the RT plan series since a date: the query's own columns.
#
#   conquest-run --var since=2024-01-01 jobs/dump_recent_plans.yml
version: 1
name: dump-recent-plans
description: RT plan series since a date, as CSV
vars:
  since:
    type: date
    description: the first series date to include
    default: 2000-01-01
select:
  # :since is a bound parameter: SQL strings take single quotes, values never go in the text
  query: |
    select SeriesInst, SeriesPat, SeriesDate, SeriesDesc
      from DICOMSeries
     where Modality = 'RTPLAN' and SeriesDate >= :since
action:
  dump:
    file: exports/recent_plans.csv
""",
    "delete_patient.yml": """\
# Forget one patient's CT series (files kept unless files: true).  ALWAYS review the plan:
#
#   conquest-run --plan-out delete.json --var patient=RT001 jobs/delete_patient.yml
#   conquest-run --apply delete.json          # refused if the archive changed meanwhile
version: 1
name: delete-patient-ct
description: Remove one patient's CT series from the index (files kept)
vars:
  patient:
    type: string
    description: the PatientID whose CT series go
select:
  patient: ${patient}
  modality: CT
expect:
  patients: 1                          # refuse a plan touching more (or fewer) patients
action:
  delete:
    files: false
""",
    "rebuild_missing.yml": """\
# Index the files of data/ that the database does not know yet.
#
#   conquest-run --dry-run jobs/rebuild_missing.yml
version: 1
name: rebuild-missing
description: Index new files only
action:
  rebuild:
    only_missing: true
""",
    "send_patient.yml": """\
# Send one patient's RT plans to the pacs node of conquest-run.yml (resumable: a re-run
# sends only what the peer has not confirmed).
#
#   conquest-run --dry-run --echo --var patient=RT001 jobs/send_patient.yml
version: 1
name: send-patient-plans
description: One patient's RT plans to the PACS
vars:
  patient:
    type: string
    description: the PatientID to send
select:
  patient: ${patient}
  modality: RTPLAN
action:
  send:
    node: pacs
    verify: true                       # C-ECHO first
""",
}

PRE_COMMIT = """\
# pre-commit (https://pre-commit.com): `pre-commit install`, then every commit validates the
# project file and the jobs.  This is conquest-run's hook conquest-run-validate (its
# .pre-commit-hooks.yaml) run from the conquest-run installed here; to let pre-commit install
# it instead, write  - repo: <where you get conquest-run>  rev: <its tag>
#                      hooks: [{id: conquest-run-validate}]
repos:
  - repo: local
    hooks:
      - id: conquest-run-validate
        name: conquest-run --validate
        entry: conquest-run --validate
        language: system
        files: ^(conquest-run\\.yml|jobs/.*\\.ya?ml)$
"""

CI = """\
# CI: validate the project file and every job (no archive needed; --json for machines).
# GitHub Actions reads this file as is; other CI systems run the same two commands.
name: validate jobs
on: [push, pull_request]
jobs:
  validate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {{python-version: "3.12"}}
      - run: pip install "conquest-run=={version}"   # or your wheel / git+URL of it
      - run: conquest-run --validate conquest-run.yml jobs/*.yml
"""

GITIGNORE = """\
# the archive and its index hold patient data: never commit them
/data/
conquest.db
conquest.db-*
.conquest.db.lock-*
# what the jobs write
/exports/
*.plan.json
"""


def scaffold_files(name: str, version: str) -> dict[str, str]:
    """Relative path -> text of every file ``init`` writes (the schemas are copied besides)."""
    files = {"conquest-run.yml": PROJECT.format(name=name)}
    for file, text in JOBS.items():
        files[f"jobs/{file}"] = HEADER + text
    files[".pre-commit-config.yaml"] = PRE_COMMIT
    files[".github/workflows/validate.yml"] = CI.format(version=version)
    files[".gitignore"] = GITIGNORE
    return files
