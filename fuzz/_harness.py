"""Shared main() of the atheris harnesses: instrument our code, seed the corpus, fuzz.

Run a harness from the repository root (see fuzz/README.md)::

    .venv/bin/python fuzz/fuzz_parse_message.py -runs=20000 fuzz/corpus/parse_message

Positional arguments are libFuzzer corpus directories: an empty or missing one is created and
filled with the target's seeds (``fuzz.targets.SEEDS``) first. The target's dictionary
(``fuzz.targets.DICTIONARIES``) is passed as ``-dict=`` unless one is given. Every other
argument goes to libFuzzer unchanged (``-runs=``, ``-max_total_time=``, ``-jobs=`` ...).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _seed(directories: Sequence[str], seeds: Sequence[bytes]) -> None:
    for name in directories:
        path = Path(name)
        if path.exists() and any(path.iterdir()):
            continue
        path.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (path / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main(target: str, instrument: Sequence[str] = ()) -> None:
    """Fuzz ``fuzz.targets.TARGETS[target]``; ``instrument`` names third-party packages whose
    coverage should guide the fuzzer too (our own package always is)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import atheris

    with atheris.instrument_imports(include=["mailsec_milter", "fuzz", *instrument]):
        from fuzz import targets

    _seed([a for a in sys.argv[1:] if not a.startswith("-")], targets.SEEDS[target])
    argv = list(sys.argv)
    words = targets.dictionary_text(target)
    if words.strip() and not any(a.startswith("-dict=") for a in argv):
        # libFuzzer leaves through C exit(): one file per target, rewritten, not one per run
        path = Path(tempfile.gettempdir()) / f"mailsec-fuzz-{target}.dict"
        path.write_text(words)
        argv.append(f"-dict={path}")
    atheris.Setup(argv, targets.TARGETS[target])
    atheris.Fuzz()
