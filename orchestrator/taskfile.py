"""Load a task by built-in name (`tasks/<name>.yaml`) or by path, with CLI overrides.

Every problem becomes a BadInputError naming the field: a typo in a task file must never
reach a provider, and never shows a traceback.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import BadInputError
from .models import TaskSpec, validation_sentence

__all__ = ["builtin_task_names", "load_task"]


def builtin_task_names() -> list[str]:
    files = resources.files("tasks").iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, str]:
    """(label for messages, YAML text)."""
    path = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise BadInputError("task", f"no task file at {name_or_path!r}")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError("task", f"cannot read {name_or_path!r} ({exc})") from exc
    resource = resources.files("tasks").joinpath(f"{name_or_path}.yaml")
    if not resource.is_file():
        known = ", ".join(builtin_task_names())
        raise BadInputError(
            "task", f"unknown task {name_or_path!r}; built-in tasks are {known}, or give a path"
        )
    return name_or_path, resource.read_text(encoding="utf-8")


def load_task(name_or_path: str, overrides: dict[str, Any] | None = None) -> TaskSpec:
    """The validated task, with non-None `overrides` applied on top (dotted keys allowed)."""
    label, text = _read(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInputError("task", f"{label} is not valid YAML{where}") from None
    except RecursionError:  # PyYAML recurses per nesting level: `[[[[...` thousands deep
        raise BadInputError("task", f"{label} nests too deeply to be a task") from None
    if not isinstance(data, dict):
        raise BadInputError("task", f"{label} must be a YAML mapping of fields")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            node = target.get(parent)
            if not isinstance(node, dict):
                node = {}
                target[parent] = node
            target = node
        target[leaf] = value
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        field, message = validation_sentence(exc)
        raise BadInputError(field, message) from None
