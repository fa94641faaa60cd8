"""SIGKILL `deployctl up` at every moment of a rent, then ONE `deployctl reap`.

Each case runs the real CLI as a subprocess against a fresh fake Vast or RunPod, kills it
at a moment found by watching the fake (tests/faults/harness.py), reaps once, and checks:
no instance left on the fake; the journal agrees (nothing live, no open intent, every
rented instance terminated-and-verified or its deployment ended with a closed bill); no
secret leaked.
`bench/fault_trials.py` runs 50 such trials per provider; these are 10 per provider.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import kill_trial

pytestmark = pytest.mark.slow

# (moment, before_rent flavour, seed): every moment and flavour, jitter varied by seed.
CASES = [
    ("before_rent", "at re-validation", 1),
    ("before_rent", "rent refused", 2),
    ("before_rent", "rent done, answer lost", 3),
    ("just_after_rent", None, 4),
    ("just_after_rent", None, 5),
    ("during_boot", None, 6),
    ("during_boot", None, 7),
    ("during_readiness", None, 8),
    ("during_readiness", None, 9),
    ("during_readiness", None, 10),
]

def _id(case) -> str:
    moment, flavour, seed = case
    return f"{moment}-{(flavour or 'jitter').replace(', ', '-').replace(' ', '-')}-{seed}"


@pytest.mark.parametrize("provider", ["vast", "runpod"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sigkill_then_one_reap_leaves_nothing(provider, case, tmp_path):
    moment, flavour, seed = case
    trial = kill_trial(provider, moment, seed, tmp_path, flavour=flavour)
    assert trial.up_exit is None, "the up finished before it was killed"
    assert trial.problems == [], f"{trial.detail}: {trial.problems}\n{trial.log}"
    destroyed = sum(trial.destroyed_by.values())
    assert destroyed == trial.instances_created == trial.reaped


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_reap_resolves_the_rent_intent_of_a_dead_launcher(provider, tmp_path):
    trial = kill_trial(provider, "before_rent", 0, tmp_path, flavour="rent refused")
    assert trial.problems == []
    assert trial.stale_intents == 0
