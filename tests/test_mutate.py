"""The mutation pass's list follows the code: every planted bug still applies to exactly one
line of a module that has guards (``scripts/mutate.py``; docs/testing.md says how to run it)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_mutate():
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_every_planted_bug_applies_to_one_line_of_a_guarded_module():
    mutate = load_mutate()
    assert len(mutate.MUTATIONS) >= 40
    for mutation in mutate.MUTATIONS:
        text = mutate.check(mutation)  # exits with a message unless `old` occurs exactly once
        assert text.replace(mutation.old, mutation.new) != text, mutation.id
        assert "\n" not in mutation.old.strip("\n") + mutation.new.strip("\n"), mutation.id
        assert all((ROOT / f).is_file() for f in mutate.GUARDS[mutation.path]), mutation.id
    assert not (ROOT / ".mutate-backup").exists(), "a mutation run left files mutated"
