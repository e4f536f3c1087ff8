"""The job JSON Schema: a valid Draft 2020-12 schema shipped in the package, whose examples
and whose documented job shapes are accepted."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conquest_run.jobs import job_schema, parse_job

from _jobs_support import REPO


def test_the_packaged_schema_is_the_repository_file_and_valid_draft_2020_12():
    schema = job_schema()
    assert schema == json.loads((REPO / "schemas" / "job.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _with_examples(node, path=()):
    if isinstance(node, dict):
        if "examples" in node:
            yield path, node
        for k, v in node.items():
            yield from _with_examples(v, path + (k,))


def test_every_example_in_the_schema_is_valid_for_its_own_definition():
    schema = job_schema()
    found = 0
    for path, node in _with_examples(schema):
        sub = dict(node, **{"$defs": schema["$defs"]})
        for example in node["examples"]:
            jsonschema.Draft202012Validator(sub).validate(example)
            found += 1
    assert found > 20


def test_options_are_described_for_editors():
    defs = job_schema()["$defs"]
    for action in ("copy", "dump", "delete", "rebuild", "send"):
        assert defs[action]["description"]
        for name, prop in defs[action]["properties"].items():
            assert prop.get("description") or "$ref" in prop, f"{action}.{name}"


@pytest.mark.parametrize("text", [
    "select: {modality: RTPLAN}\naction: {copy: {destination: out}}",
    "select: {patient: ['00123', PAT2], study: '1.2.3', series: ['1.2.3.4']}\n"
    "action: {copy: {destination: out, layout: '{PatientID}/{Modality}_{SeriesInst}/{SOPInstanc}.dcm',"
    " overwrite: if_different, manifest: csv}}",
    "select: {modality: CT}\naction: {delete: {files: true}}",
    "select: {modality: CT}\naction: {delete: }",
    "action: {rebuild: }",
    "select: {patient: P1}\naction: {rebuild: {refresh: true}}",
    "action: {dump: {file: p.csv, table: v_series}}",
    "select: {query: select SOPInstanc from DICOMImages}\naction: {dump: {file: h, format: json, per_instance: true}}",
    "defaults: &peer {host: pacs.example.org, port: 104, called_ae: PACS}\n",  # refused below
    "nodes:\n  pacs: {host: 10.0.0.1, port: 104, called_ae: PACS, calling_ae: ME}\n"
    "steps:\n  - name: first\n    select: {modality: RTPLAN}\n    action: {send: {node: pacs, associations: 4, verify: true}}\n"
    "  - select: {modality: RTDOSE}\n    action: {send: {host: '::1', port: 11112, called_ae: X, retries: 3, retry_delay: 0.5, timeout: 5}}",
])
def test_documented_job_shapes(text):
    if text.startswith("defaults:"):
        with pytest.raises(Exception, match="unknown key 'defaults'"):
            parse_job("version: 1\n" + text, "j.yml")
        return
    job = parse_job("version: 1\n" + text, "j.yml")
    assert job.steps and all(s.action for s in job.steps)


def test_anchors_and_merge_keys_share_peer_settings():
    job = parse_job("version: 1\n"
                    "nodes:\n  a: &peer {host: 10.0.0.1, port: 104, called_ae: A}\n"
                    "  b: {<<: *peer, called_ae: B}\n"
                    "select: {modality: CT}\naction: {send: {node: b}}\n", "j.yml")
    assert job.nodes["b"] == {"host": "10.0.0.1", "port": 104, "called_ae": "B"}


def test_mutated_jobs_get_located_human_messages_only():
    """Random damage to valid jobs: every answer is a located JobError in plain words."""
    import copy
    import random

    import yaml

    from conquest_run.errors import JobError
    bases = [yaml.safe_load((REPO / "jobs" / n).read_text()) for n in
             ("export_rtplans.yml", "dump_rt_summary.yml", "delete_patient.yml",
              "rebuild_missing.yml")]
    values = [None, 1, -5, 1.5, True, "", "x", [], [1], {}, {"a": 1}, 70000, ["a", None],
              "a\\b"]

    def paths(d, p=()):
        yield p
        items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
        for k, v in items:
            yield from paths(v, p + (k,))

    rng = random.Random(11)
    for _ in range(300):
        d = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(list(paths(d))[1:])
            parent = d
            for k in p[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and rng.random() < 0.2:
                del parent[p[-1]]
            else:
                parent[p[-1]] = copy.deepcopy(rng.choice(values))
        try:
            parse_job(yaml.safe_dump(d), "f.yml")
        except JobError as exc:
            for line in str(exc).splitlines():
                assert line.startswith("f.yml:"), line
                assert "is not valid under" not in line and "schema" not in line, line
