from __future__ import annotations

import pytest

from orchestrator.errors import EXIT_BAD_INPUT, BadInputError
from orchestrator.models import Engine, Quant
from orchestrator.taskfile import builtin_task_names, load_task
from orchestrator.units import format_duration, parse_duration_s

REQUIRED_TASKS = {
    "smollm2-135m",
    "mistral-7b",
    "llama-3.1-8b",
    "qwen2.5-7b",
    "qwen-14b",
    "qwen2.5-32b",
    "llama-3.1-70b",
    "mixtral-8x7b",
    "meta-llama-3-8b",
    "meta-llama-3-70b",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("3h", 10800),
        ("1d", 86400),
        ("1h30m", 5400),
        (600, 600),
        ("600", 600),
        ("0.5h", 1800),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5m", "10x", "", True])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration_s(bad)


def test_format_duration():
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"


def test_builtin_tasks_present_and_valid():
    names = set(builtin_task_names())
    assert names >= REQUIRED_TASKS
    for name in names:
        task = load_task(name)
        assert task.name == name
        assert task.ttl_s > 0 and task.keep_alive_s > 0


def test_qwen14b_defaults_to_awq_and_mistral_has_lora():
    qwen = load_task("qwen-14b")
    assert qwen.quant is Quant.AWQ and qwen.engine is Engine.VLLM
    assert "Qwen2.5-14B-Instruct" in qwen.model
    mistral = load_task("mistral-7b")
    assert mistral.adapter is not None and mistral.adapter.rank > 0


def test_user_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nmodel: Qwen/Qwen2.5-7B-Instruct\nquant: fp8\ncontext_tokens: 4096\n"
        "keep_alive: 2m\nttl: 1h\nenv: {QUOTED: 'he said \"hi\"'}\n"
    )
    task = load_task(str(path))
    assert task.quant is Quant.FP8 and task.keep_alive_s == 120 and task.ttl_s == 3600


def test_overrides_apply_dotted_keys():
    task = load_task("qwen-14b", {"latency.min_decode_tok_s": 55, "concurrency": 2, "spot": None})
    assert task.latency.min_decode_tok_s == 55 and task.concurrency == 2


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("name: x\nmodel: m\nquant: q9\n", "quant"),
        ("name: x\nmodel: m\nconcurency: 4\n", "concurency"),
        ("name: x\nmodel: m\ncontext_tokens: -1\n", "context_tokens"),
        ("name: x\nmodel: m\nkeep_alive: soon\n", "keep_alive"),
        ("name: x\nmodel: m\nquant: awq\nengine: llamacpp\n", "quant"),
        ("name: x\nmodel: m\nmax_price_per_hour_usd: -1\n", "max_price_per_hour_usd"),
        ("name: x\nmodel: m\nenv: {'BAD NAME': v}\n", "env"),
        ("- just\n- a list\n", "task"),
        ("name: [unclosed\n", "task"),
    ],
)
def test_bad_task_files_name_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(BadInputError) as info:
        load_task(str(path))
    assert info.value.field == field
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert "\n" not in str(info.value)


def test_unknown_task_name_lists_builtins():
    with pytest.raises(BadInputError) as info:
        load_task("no-such-task")
    assert "qwen-14b" in str(info.value)
