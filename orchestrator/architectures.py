"""Model architecture facts (from shared/reference/model_configs.csv) and their lookup.

A task names the repo it serves (`Qwen/Qwen2.5-14B-Instruct-AWQ`); sizing needs the base
architecture. Lookup tries, in order: an explicit `arch` key, the repo itself, the repo
without a quantization suffix (-AWQ, -GPTQ-Int4, -GGUF, ...), and the bare model name.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .errors import BadInputError

__all__ = ["ModelArch", "all_models", "find_model"]


@dataclass(frozen=True)
class ModelArch:
    name: str
    hf_repo: str
    architecture: str
    params_b: float  # total parameters, billions
    active_params_b: float  # per token (MoE: experts_per_token of num_experts)
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int
    experts_per_token: int

    @property
    def embedding_params(self) -> float:
        """Input embedding plus the output head (when untied): kept at 16 bit by most quants."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    @property
    def active_params(self) -> float:
        return self.active_params_b * 1e9

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """2 (K and V) x layers x kv_heads x head_dim x bytes per element."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_element


_QUANT_SUFFIX = re.compile(
    r"([-_.](awq|gptq(-int[48])?|int[48]|fp8|gguf|bnb-4bit|4bit|8bit|w4a16|w8a8)\b.*)$", re.I
)


_NOISE = re.compile(r"(^meta-)|([-_](instruct|chat|hf|it|base)\b)", re.I)


def _key(text: str) -> str:
    """Compare names without vendor prefixes and -Instruct/-chat/-hf suffixes: a fine-tune
    shares its base model's architecture."""
    return re.sub(r"[^a-z0-9.]", "", _NOISE.sub("", text.lower()))


@cache
def all_models() -> tuple[ModelArch, ...]:
    text = resources.files("orchestrator").joinpath("data/models.csv").read_text()
    models = []
    for row in csv.DictReader(text.splitlines()):
        models.append(
            ModelArch(
                name=row["name"],
                hf_repo=row["hf_repo"],
                architecture=row["architecture"],
                params_b=float(row["params_b"]),
                active_params_b=float(row["active_params_b"]),
                layers=int(row["layers"]),
                hidden_size=int(row["hidden_size"]),
                intermediate_size=int(row["intermediate_size"]),
                attention_heads=int(row["attention_heads"]),
                kv_heads=int(row["kv_heads"]),
                head_dim=int(row["head_dim"]),
                vocab_size=int(row["vocab_size"]),
                max_position_embeddings=int(row["max_position_embeddings"]),
                tie_word_embeddings=row["tie_word_embeddings"] == "true",
                num_experts=int(row["num_experts"]),
                experts_per_token=int(row["experts_per_token"]),
            )
        )
    return tuple(models)


@cache
def _index() -> dict[str, ModelArch]:
    index: dict[str, ModelArch] = {}
    for model in all_models():
        for alias in (model.name, model.hf_repo, model.hf_repo.split("/")[-1]):
            index.setdefault(_key(alias), model)
    return index


def find_model(model: str, arch: str | None = None) -> ModelArch:
    """The architecture behind `model` (repo, file or name); BadInputError when unknown."""
    index = _index()
    candidates = [arch] if arch else []
    base = model.split("/")[-1]
    candidates += [model, base, _QUANT_SUFFIX.sub("", base)]
    if base.lower().endswith(".gguf"):
        stem = re.sub(r"([-.](q\d\w*|f16|bf16))?\.gguf$", "", base, flags=re.I)
        candidates.append(stem)
    for candidate in candidates:
        hit = index.get(_key(candidate))
        if hit is not None:
            return hit
    if arch:
        raise BadInputError(
            "arch", f"unknown architecture {arch!r}; see `deployctl models` for the known ones"
        )
    raise BadInputError(
        "model",
        f"no architecture facts for {model!r}; set `arch:` to one of the names in "
        "`deployctl models`",
    )
