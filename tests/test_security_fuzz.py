"""``--validate`` over a few hundred mutated job files (seeded, bounded): every one ends with
exit 0 or 2 and a message, never a traceback, each within 2 s (issue 15)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from conquest_run.cli import main

REPO = Path(__file__).resolve().parents[1]
SEEDS = sorted((REPO / "jobs").glob("*.yml"))
PIECES = ["{", "}", "[", "]", "&a ", "*a", "<<: *a\n", "!!python/object:os.system ", "|\n",
          ">-\n", ": ", "'", '"', "#", "\t", "\x1b", "\x00", "\ufeff", "%", "((((", "))",
          ";", " union select 1", " with recursive c as (select 1 from c) ", "0x", "1e999",
          "~", "null", "- ", "\n  - ", "\\", "{SeriesDesc}", "../", "/etc/passwd", "é",
          "--", "/*", "printf('%.*c', 9, 'x')", "  ", "\n", "?", ",", "yes", "2026-01-01"]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(text) + 1)
        kind = rng.randrange(5)
        if kind == 0:                                   # insert a hostile piece
            text = text[:i] + rng.choice(PIECES) + text[i:]
        elif kind == 1:                                 # delete a span
            text = text[:i] + text[i + rng.randint(1, 12):]
        elif kind == 2:                                 # repeat a span
            j = min(len(text), i + rng.randint(1, 40))
            text = text[:j] + text[i:j] * rng.randint(2, 6) + text[j:]
        elif kind == 3:                                 # swap two lines
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        else:                                           # flip one character
            if i < len(text):
                text = text[:i] + chr(rng.randrange(1, 0x250)) + text[i + 1:]
    return text


@pytest.mark.timeout(300)
def test_validate_survives_mutated_jobs(tmp_path, monkeypatch, capsys):
    assert SEEDS, "jobs/*.yml not found"
    monkeypatch.chdir(tmp_path)
    rng = random.Random(15)
    slowest = 0.0
    for n in range(300):
        seed = SEEDS[n % len(SEEDS)]
        path = tmp_path / f"m{n:03d}.yml"
        path.write_text(mutate(seed.read_text(), rng), encoding="utf-8", errors="surrogatepass")
        started = time.monotonic()
        code = main(["--validate", str(path)])          # an escaping exception fails the test
        took = time.monotonic() - started
        slowest = max(slowest, took)
        out, err = capsys.readouterr()
        assert code in (0, 2), (path.read_text(), out, err)
        assert "Traceback" not in err
        if code == 2:
            assert err.strip(), path.read_text()
        assert took < 2.0, (took, path.read_text())
