"""Hostile input (hypothesis): task YAML and CLI flags never produce a traceback.

Bad input exits 2 with one sentence naming the field (DESIGN §7); input that happens to
be valid plans normally (exit 0, or 4 when nothing fits). Everything runs in-process
through `orchestrator.cli.main(argv)`, offline: `plan` reads the bundled price catalog,
and `up` finds no provider credentials (so nothing can be rented). Examples are
derandomized: the same inputs on every run, on every machine.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.models import TaskSpec

ROOT = Path(__file__).resolve().parents[2]
CATALOG = str(ROOT / "tests" / "fixtures" / "catalog")
BASE_TASK = yaml.safe_load((ROOT / "tasks" / "qwen-14b.yaml").read_text())
FIELDS = {name for name in TaskSpec.model_fields} | {
    f.alias for f in TaskSpec.model_fields.values() if f.alias
}
NESTED = ["latency.min_decode_tok_s", "latency.max_ttft_s", "load.prompt_tokens",
          "load.output_tokens", "adapter.repo", "adapter.rank", "adapter.name"]  # fmt: skip
HOSTILE_WORDS = [
    "", " ", "0", "-1", "-0", "1e309", "-1e309", "inf", "-inf", "nan", ".inf", ".nan",
    "9" * 400, "1" + "0" * 30 + "h", "10m", "1h30m", "3d", "0.0000001s", "99999999999d",
    "\uff11\uff12", "\u0663", "\u216b", "\u202eevil", "\uff51\uff57\uff45\uff4e",
    "../../../etc/passwd", "$(id)", "`id`",
    "'; DROP TABLE deployments; --", "%s%s%n", "{{7*7}}", "${HOME}", "\\", "\"", "'",
    "a\nb", "\t", "\x7f", "🙂" * 50, "null", "~", "yes", "no", "[1, 2]", "{a: 1}",
    "awq", "vllm", "qwen-14b", "RTX 4090",
]  # fmt: skip
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ----------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=4),
    max_leaves=12,
)  # fmt: skip
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=20))


@st.composite
def mutated_tasks(draw) -> dict:
    """A valid built-in task with fields set to hostile values, removed, or added."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE_TASK.items()}
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set", "nested", "delete", "add"]))
        if action == "set":
            doc[draw(st.sampled_from(sorted(FIELDS)))] = draw(values)
        elif action == "nested":
            parent, leaf = draw(st.sampled_from(NESTED)).split(".")
            node = doc.get(parent)
            doc[parent] = {**(node if isinstance(node, dict) else {}), leaf: draw(values)}
        elif action == "delete" and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        else:
            doc[draw(keys)] = draw(values)
    return doc


random_docs = st.dictionaries(keys, values, max_size=8)


# -- the checks ------------------------------------------------------------------------------
def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    started = time.monotonic()
    code = main(argv)
    out, err = capsys.readouterr()
    assert time.monotonic() - started < 20, f"{argv[:3]} took too long"
    return code, out, err


def _assert_clean(code: int, err: str, allowed: tuple[int, ...]) -> None:
    assert code in allowed, f"exit {code}: {err[-600:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-600:]


def _task_error_field(err: str, doc: dict | None = None) -> str:
    """The field a task error names: `error: <field>: <sentence>`, one printable line,
    where <field> starts with a task field, "task", or (shown escaped) a key of `doc`."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.isprintable(), f"raw control characters reach the terminal: {line!r}"
    names = sorted(FIELDS | {"task"} | {_shown(k) for k in doc or {}}, key=len, reverse=True)
    for name in names:
        if line.startswith(f"error: {name}: "):
            return name
        if line.startswith(f"error: {name}.") and ": " in line[len(name) + 8 :]:
            return name + line[len(name) + 7 :].split(": ", 1)[0]
    raise AssertionError(f"not `error: <field>: <sentence>` naming a field: {line!r}")


def _shown(key) -> str:
    """How an error message shows a key from a user's file (models._printable)."""
    key = str(key)
    if not key or key != key.strip():
        return repr(key)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in key)


def _write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "task.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return str(path)


def _plan_task(capsys, tmp_path: Path, doc) -> tuple[int, str]:
    path = _write(tmp_path, yaml.safe_dump(doc, allow_unicode=True))
    code, _, err = _run(capsys, ["plan", path, "--catalog", CATALOG, "--json"])
    _assert_clean(code, err, (0, 2, 4))
    return code, err


# -- task files ---------------------------------------------------------------------------------
@SETTINGS
@given(doc=mutated_tasks())
def test_mutated_task_files_exit_2_naming_the_field(doc, capsys, tmp_path):
    code, err = _plan_task(capsys, tmp_path, doc)
    if code == 2:
        _task_error_field(err, doc)


@SETTINGS
@given(doc=random_docs)
def test_random_task_documents_exit_2_naming_the_field(doc, capsys, tmp_path):
    code, err = _plan_task(capsys, tmp_path, doc)
    assert code == 2 or {"name", "model"} <= set(doc), err  # both are required
    if code == 2:
        _task_error_field(err, doc)


@SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_bytes_as_a_task_file_exit_2(text, capsys, tmp_path):
    path = _write(tmp_path, text)
    code, _, err = _run(capsys, ["plan", path, "--catalog", CATALOG])
    _assert_clean(code, err, (2,))
    assert _task_error_field(err) in FIELDS | {"task"}


def test_yaml_bombs_and_tags_are_refused_quickly(capsys, tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bombs = {
        "billion laughs in a field": "name: x\nmodel: m\n" + laughs.replace("a: &a", "env: &a")
        .replace("i: &i", "regions: &i"),
        "python object tag": "name: x\nmodel: !!python/object/apply:os.system ['id']\n",
        "deep nesting": "name: x\nmodel: m\nenv: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge key": "name: x\nmodel: m\n" + "k" * 100_000 + ": 1\n",
        "duplicate keys": "name: x\nname: y\nmodel: m\nttl: 1h\nttl: -1\n",
    }
    for what, text in bombs.items():
        started = time.monotonic()
        code, _, err = _run(capsys, ["plan", _write(tmp_path, text), "--catalog", CATALOG])
        _assert_clean(code, err, (2,))
        assert time.monotonic() - started < 5, what
        _task_error_field(err)


def test_field_names_cannot_write_escape_sequences_to_the_terminal(capsys, tmp_path):
    for key in ("\x1b]0;owned\x07", "\x1b[2J", "a\rb", "x\u202eevil", "line\nbreak"):
        code, err = _plan_task(capsys, tmp_path, {**BASE_TASK, key: 1})
        assert code == 2 and "\x1b" not in err and "\u202e" not in err, err
        assert _task_error_field(err, {key: 1}) == key.encode("unicode_escape").decode()


@pytest.mark.parametrize(
    "name",
    ["VAST_URL", "RUNPOD_API_BASE_URL", "CONTAINER_API_KEY", "DEPLOYCTL_ENGINE_START_S",
     "DEPLOYCTL_GUARD_HOST", "deployctl_dir", "Runpod_Pod_Id"],
)  # fmt: skip
def test_a_task_cannot_redirect_the_guard_through_its_env(name, capsys, tmp_path):
    """A task file's env reaches the instance: it must not point the guard's teardown
    (and its instance-scoped key) at another host, nor change the guard's own limits."""
    doc = {**BASE_TASK, "env": {"HF_HUB_ENABLE_HF_TRANSFER": "1", name: "https://evil.test"}}
    code, err = _plan_task(capsys, tmp_path, doc)
    assert code == 2 and _task_error_field(err, doc) == "env", err
    assert "reserved" in err


@pytest.mark.parametrize("field", ["keep_alive", "ttl"])
@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, "9" * 400, 10**400, True, "-5m", "5x", ""],
    ids=["inf", "-inf", "nan", "400 nines", "10**400", "true", "-5m", "5x", "empty"],
)
def test_durations_that_are_not_durations_exit_2(field, value, capsys, tmp_path):
    code, err = _plan_task(capsys, tmp_path, {**BASE_TASK, field: value})
    assert code == 2 and _task_error_field(err, BASE_TASK) == field, err


# -- flags --------------------------------------------------------------------------------------
flag_values = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=30),
    st.sampled_from([w for w in HOSTILE_WORDS if "\x00" not in w]),
)
PLAN_FLAGS = {  # flag -> the task field it sets (an error may name either)
    "--context": "context_tokens", "--concurrency": "concurrency",
    "--min-tps": "latency", "--max-ttft": "latency", "--max-price": "max_price_per_hour_usd",
    "--quant": "quant", "--engine": "engine", "--region": "regions", "--top": "top",
    "--requests-per-month": "requests", "--gpu-seconds": "gpu", "--sort": "sort",
    "--provider": "provider",
}  # fmt: skip
UP_FLAGS = {
    "--keep-alive": "keep_alive", "--ttl": "ttl", "--max-attempts": "max",
    "--boot-timeout": "boot", "--ready-timeout": "ready", "--max-price": "max_price",
    "--context": "context_tokens", "--concurrency": "concurrency",
}  # fmt: skip


# Flags that set no task field, so that only their click type stands between a hostile
# value and the code: inf, nan and absurd counts once crashed `--json` output or left
# `up` waiting without a deadline.
CLI_ONLY_CASES = [
    *((flag, value) for flag in ("--gpu-seconds", "--boot-timeout", "--ready-timeout")
      for value in ("inf", "nan", "1e309")),
    ("--requests-per-month", "9" * 400),
    ("--top", "9" * 400),
]  # fmt: skip


def _names_the_flag(err: str, flag: str, field: str) -> bool:
    return flag in err or field in err


@pytest.mark.parametrize(("flag", "value"), CLI_ONLY_CASES, ids=lambda v: v[:12])
def test_out_of_range_numbers_in_cli_only_flags_exit_2(flag, value, capsys):
    if flag in ("--gpu-seconds", "--requests-per-month", "--top"):
        argv = ["plan", "qwen-14b", "--catalog", CATALOG, "--json", flag, value]
    else:
        argv = ["up", "qwen-14b", flag, value]
    code, _, err = _run(capsys, argv)
    assert code == 2 and flag in err, err


def test_every_hostile_word_in_every_flag(capsys):
    """The fixed list, exhaustively (hypothesis below explores beyond it)."""
    words = [w for w in HOSTILE_WORDS if "\x00" not in w]
    for flag, field in PLAN_FLAGS.items():
        for word in words:
            argv = ["plan", "qwen-14b", "--catalog", CATALOG, "--json", flag, word]
            code, _, err = _run(capsys, argv)
            _assert_clean(code, err, (0, 2, 4))
            assert code != 2 or _names_the_flag(err, flag, field), (flag, word, err)
    for flag, field in UP_FLAGS.items():
        for word in words:
            code, _, err = _run(capsys, ["up", "qwen-14b", flag, word])
            _assert_clean(code, err, (1, 2, 3, 4))
            assert code != 1 or "no provider can search offers" in err, err
            assert code != 2 or _names_the_flag(err, flag, field), (flag, word, err)


@SETTINGS
@given(flag=st.sampled_from(sorted(PLAN_FLAGS)), value=flag_values)
def test_plan_flags_exit_2_naming_the_flag(flag, value, capsys):
    code, _, err = _run(capsys, ["plan", "qwen-14b", "--catalog", CATALOG, "--json", flag, value])
    _assert_clean(code, err, (0, 2, 4))
    if code == 2:
        assert _names_the_flag(err, flag, PLAN_FLAGS[flag]), err


@SETTINGS
@given(flag=st.sampled_from(sorted(UP_FLAGS)), value=flag_values)
def test_up_flags_exit_2_naming_the_flag_before_renting_anything(flag, value, capsys):
    code, _, err = _run(capsys, ["up", "qwen-14b", flag, value])
    # no provider has credentials here: a valid value ends in "no provider can search
    # offers" (1), "no offer fits" (4) or a guardrail (3); nothing is ever rented
    _assert_clean(code, err, (1, 2, 3, 4))
    assert code != 1 or "no provider can search offers" in err, err
    if code == 2:
        assert _names_the_flag(err, flag, UP_FLAGS[flag]), err


@SETTINGS
@given(argv=st.lists(st.one_of(flag_values, st.sampled_from(sorted(PLAN_FLAGS | UP_FLAGS))),
                     max_size=6))  # fmt: skip
def test_any_argv_never_shows_a_traceback(argv, capsys):
    for command in (["plan", "qwen-14b", "--catalog", CATALOG], ["up"], ["estimate"], []):
        code, _, err = _run(capsys, [*command, *argv])
        _assert_clean(code, err, (0, 1, 2, 3, 4))
        assert code != 1 or err.startswith("error:"), err
