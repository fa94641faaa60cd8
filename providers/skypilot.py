"""The SkyPilot provider: AWS, GCP, Azure, Lambda and the other clouds SkyPilot reaches.

Offers come from SkyPilot's own local catalog cache (or a `--catalog DIR`), read through
`orchestrator.catalog`, so listing never imports the SDK (`import sky` takes seconds and
pins click). vast and runpod are left out unless asked for by name: they have native
adapters with live prices. Offers keep source="catalog" and the files' date.

Where SkyPilot keeps its cache (read from sky/catalog/common.py and sky/skylet/, 0.14.1):
    ${SKY_RUNTIME_DIR:-~}/.sky/catalogs/<CATALOG_SCHEMA_VERSION>/<cloud>/vms.csv
with CATALOG_SCHEMA_VERSION = "v8" in 0.14 (older releases used v7 and before). The version is
read from the installed SDK's `sky/skylet/constants.py` as text, without importing it;
when that directory is absent, the newest `v<N>` directory present is used.

Lifecycle calls (launch, status, down) will go through `_sky()`, the only place that
imports the SDK.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from orchestrator.catalog import (
    NATIVE_PROVIDER_CLOUDS,
    CatalogResult,
    catalog_files,
    read_catalog_dir,
)
from orchestrator.errors import CredentialsError
from orchestrator.models import CredentialStatus, Offer, OfferQuery
from orchestrator.offers import matches

__all__ = ["SkyPilotProvider", "sky_catalog_dir"]

INSTALL_HINT = "pip install 'deployctl[skypilot]' and run `sky check`"
NO_CATALOG_HINT = "run `sky check` (or pass --catalog DIR)"
_RUNTIME_DIR_ENV = "SKY_RUNTIME_DIR"  # sky.skylet.constants.SKY_RUNTIME_DIR_ENV_VAR_KEY
_SCHEMA_VERSION = re.compile(r"""^CATALOG_SCHEMA_VERSION\s*=\s*['"](v\d+)['"]""", re.M)


def sdk_installed() -> bool:
    """Whether the SkyPilot SDK can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("sky") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _installed_schema_version() -> str | None:
    """CATALOG_SCHEMA_VERSION of the installed SDK, read from its source text."""
    try:
        spec = importlib.util.find_spec("sky")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    constants = Path(spec.origin).parent / "skylet" / "constants.py"
    try:
        match = _SCHEMA_VERSION.search(constants.read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


def sky_catalog_dir() -> Path:
    """SkyPilot's versioned catalog cache directory (it may not exist)."""
    runtime_dir = os.path.expanduser(os.environ.get(_RUNTIME_DIR_ENV, "~"))
    base = Path(runtime_dir) / ".sky" / "catalogs"
    version = _installed_schema_version()
    if version and (base / version).is_dir():
        return base / version
    try:
        present = [p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)]
    except OSError:
        present = []
    if present:
        return max(present, key=lambda p: int(p.name[1:]))
    return base / (version or "v8")


class SkyPilotProvider:
    """Offers from SkyPilot's catalog; launching through the SDK comes with the lifecycle."""

    name: ClassVar[str] = "skypilot"

    def __init__(
        self, catalog_dir: str | Path | None = None, clouds: list[str] | None = None
    ) -> None:
        self.catalog_dir = Path(catalog_dir).expanduser() if catalog_dir else None
        self.clouds = [c.lower() for c in clouds] if clouds else None
        self.unknown_gpu_names: set[str] = set()  # vendor names of the last listing
        self.skipped_accelerators: dict[str, str] = {}
        self.last_result: CatalogResult | None = None

    def catalog_root(self) -> Path:
        return self.catalog_dir if self.catalog_dir is not None else sky_catalog_dir()

    def check_credentials(self) -> CredentialStatus:
        if not sdk_installed():
            return CredentialStatus(ok=False, hint=INSTALL_HINT)
        if not self._catalog_files():
            return CredentialStatus(ok=False, hint=NO_CATALOG_HINT)
        return CredentialStatus(ok=True)

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Catalog offers matching `query` (the same predicate the core applies)."""
        files = self._catalog_files()
        if not files:
            raise CredentialsError(
                self.name,
                f"no SkyPilot catalog found at {self.catalog_root()}",
                hint=NO_CATALOG_HINT,
            )
        if self.clouds is not None:
            clouds = set(self.clouds)
        else:
            clouds = {c for c in files if c not in NATIVE_PROVIDER_CLOUDS}
        result = read_catalog_dir(self.catalog_root(), clouds=clouds, provider=self.name)
        self.last_result = result
        self.unknown_gpu_names = set(result.unknown_gpu_names)
        self.skipped_accelerators = result.skipped_accelerators
        return [offer for offer in result.offers if matches(offer, query)]

    def _catalog_files(self) -> list[str]:
        root = self.catalog_root()
        if not root.exists():
            return []
        return list(catalog_files(root))


def _sky() -> ModuleType:
    """Import the SkyPilot SDK (seconds): only for lifecycle calls, never for listing."""
    try:
        import sky
    except ImportError as exc:
        raise CredentialsError(
            "skypilot", "the SkyPilot SDK is not installed", hint=INSTALL_HINT
        ) from exc
    return sky
