"""What ``--help`` and ``conquest-run help`` say: one line, examples and exit codes per command,
and the git-like answer to a mistyped command."""

from __future__ import annotations

__all__ = ["SUMMARY", "EXAMPLES", "EXIT_CODES", "epilog", "unknown_command", "looks_like_job"]

import difflib
import os

SUMMARY = {
    None: "run job files: plan, dry-run, validate, save and apply plans",
    "init": "scaffold a job repository (project file, example jobs, pre-commit, CI)",
    "list": "list the repository's jobs: name, description, actions, destructive or not",
    "show": "explain one job: its steps, what each selects, its variables, its archive",
    "rebuild": "index the data directory into the database",
    "store": "copy files or folders into data/<PatientID>/ and index them",
    "summary": "one line per series of the index, with totals",
    "query": "run one read-only SQL statement against the index",
    "serve": "receive DICOM (C-STORE, C-ECHO, C-FIND, C-MOVE, C-GET) into the archive",
    "echo": "send a C-ECHO to a DICOM peer",
    "history": "past runs and outcomes from the audit log",
    "restore": "put back the files a quarantining delete moved, and index them again",
    "load-csv": "append a CSV file's rows to a user table beside the archive",
    "image-stats": "pixel statistics per series into a user table",
    "migrate": "copy a SQLite index (conquest-run's tables too) into PostgreSQL",
    "worker": "send a PostgreSQL index's queued instances (leases; any number of workers)",
    "completion": "print a bash or zsh completion script",
    "help": "show the help of conquest-run or of one command",
}

EXAMPLES = {
    None: ["conquest-run --validate jobs/*.yml",
           "conquest-run --dry-run --var patient=RT001 jobs/export_patient.yml",
           "conquest-run --plan-out plan.json jobs/delete_patient.yml",
           "conquest-run --apply plan.json"],
    "init": ["conquest-run init my-jobs", "conquest-run init ."],
    "list": ["conquest-run list", "conquest-run list --json"],
    "show": ["conquest-run show jobs/export_rtplans.yml", "conquest-run show export-rtplans"],
    "rebuild": ["conquest-run rebuild", "conquest-run rebuild --only-missing --dry-run",
                "conquest-run rebuild --patient RT001"],
    "store": ["conquest-run store incoming/", "conquest-run store --dry-run scan1.dcm scan2.dcm"],
    "summary": ["conquest-run summary", "conquest-run summary | sort -k3"],
    "query": ["conquest-run query \"select PatientID, PatientNam from DICOMPatients\"",
              "conquest-run query \"select * from DICOMSeries where Modality = ?\" "
              "--param RTPLAN"],
    "serve": ["conquest-run serve --port 11112 --allow MODALITY1"],
    "echo": ["conquest-run echo 127.0.0.1 104 --called-ae PACS"],
    "history": ["conquest-run history", "conquest-run history --patient RT001 --failed",
                "conquest-run history export --since 2026-12-01 --out audit.csv"],
    "restore": ["conquest-run history --action delete", "conquest-run restore 1a2b3c4d"],
    "load-csv": ["conquest-run load-csv review.csv --table review"],
    "image-stats": ["conquest-run image-stats --modality CT --table ct_stats"],
    "migrate": ["conquest-run migrate --from conquest.db --to postgresql://conquest@dbhost:5432/pacs"],
    "worker": ["conquest-run worker --database postgresql://conquest@dbhost:5432/pacs "
               "--data /mnt/archive/data",
               "conquest-run worker --database postgresql://conquest@dbhost/pacs --batch 50 "
               "--lease 60 --idle-exit 600"],
    "completion": ["conquest-run completion bash > ~/.local/share/bash-completion/completions/"
                   "conquest-run",
                   "conquest-run completion zsh > ~/.zfunc/_conquest-run"],
    "help": ["conquest-run help", "conquest-run help rebuild"],
}

EXIT_CODES = "exit codes: 0 all done, 1 some work failed, 2 invalid input or usage"


def epilog(name: str | None) -> str:
    examples = EXAMPLES.get(name, [])
    lines = (["examples:"] + [f"  {e}" for e in examples] + [""] if examples else []) \
        + [EXIT_CODES]
    return "\n".join(lines)


def unknown_command(word: str, commands) -> str:
    close = difflib.get_close_matches(word, list(commands), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"conquest-run: unknown command '{word}'{hint}; see conquest-run help "
            f"(a job file is an existing path or ends in .yml or .yaml)")


def looks_like_job(word: str) -> bool:
    """A job file is an existing path, or a name ending in .yml / .yaml."""
    return os.path.exists(word) or word.lower().endswith((".yml", ".yaml"))
