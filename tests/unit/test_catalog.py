"""SkyPilot-format catalog CSVs -> Offers (orchestrator/catalog.py), on the dated snapshot."""

from __future__ import annotations

import csv
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.catalog import _offer_constructor, catalog_files, read_catalog_dir
from orchestrator.errors import BadInputError
from orchestrator.hardware import get_gpu
from orchestrator.models import Offer

CATALOG_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "catalog"

# Offers per file (on-demand + spot, after zone de-duplication) and how many are spot.
OFFERS_PER_FILE = {
    "aws.csv": 1058,
    "azure.csv": 244,
    "cudo.csv": 195,
    "gcp.csv": 653,
    "hyperbolic.csv": 37,
    "lambda.csv": 306,
    "nebius.csv": 29,
    "primeintellect.csv": 427,
    "runpod.csv": 862,
    "shadeform.csv": 244,
    "vast.csv": 61,
}
SPOT_PER_CLOUD = {"aws": 528, "azure": 122, "gcp": 323, "nebius": 8, "runpod": 255}
HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n"  # noqa: E501


@pytest.fixture(scope="module")
def snapshot():
    return read_catalog_dir(CATALOG_DIR)


def _cloud(offer: Offer) -> str:
    return offer.cloud or offer.provider


def _write(tmp_path: Path, name: str, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_snapshot_file_parses_with_known_offer_counts(snapshot):
    assert snapshot.offers_per_file == OFFERS_PER_FILE
    assert len(snapshot.offers) == sum(OFFERS_PER_FILE.values())
    assert snapshot.skipped_files == ["accelerators.csv"]  # not a VM catalog


def test_offers_are_valid_canonical_and_unique(snapshot):
    keys = set()
    for offer in snapshot.offers:
        # model_construct skipped validation: prove every field would have passed it.
        assert Offer.model_validate(offer.model_dump()) == offer
        assert get_gpu(offer.gpu).name == offer.gpu
        assert offer.price_per_hour_usd > 0
        assert offer.vram_gib > 0
        assert offer.gpu_count >= 1
        assert offer.source == "catalog"
        assert offer.raw["accelerator_name"]
        assert "\r" not in offer.region + (offer.instance_type or "") + offer.offer_id
        keys.add(offer.key)
    assert len(keys) == len(snapshot.offers)


def test_spot_offers_only_where_spot_price_is_real(snapshot):
    spot: dict[str, int] = {}
    for offer in snapshot.offers:
        if offer.spot:
            spot[_cloud(offer)] = spot.get(_cloud(offer), 0) + 1
            assert 0 < offer.price_per_hour_usd < 1000
    # lambda/cudo/shadeform/hyperbolic: empty SpotPrice; vast: 0.00; primeintellect: 99999999.
    assert spot == SPOT_PER_CLOUD


def test_placeholder_spot_price_is_not_a_spot_offer(tmp_path):
    _write(tmp_path, "primeintellect.csv", [
        'x1,L4,1,8,32,,0.5,99999999,US,',
        'x2,L4,1,8,32,,0.6,0,US,',
        'x3,L4,1,8,32,,0.7,0.3,US,',
    ])  # fmt: skip
    result = read_catalog_dir(tmp_path)
    assert [(o.instance_type, o.spot) for o in result.offers if o.spot] == [("x3", True)]
    assert len(result.offers) == 4


def test_provider_and_cloud_mapping(snapshot):
    by_file = {_cloud(o): (o.provider, o.cloud) for o in snapshot.offers}
    assert by_file["vast"] == ("vast", None)
    assert by_file["runpod"] == ("runpod", None)
    for cloud in ("aws", "gcp", "azure", "lambda", "cudo", "nebius", "primeintellect"):
        assert by_file[cloud] == ("skypilot", cloud)
    forced = read_catalog_dir(CATALOG_DIR, clouds={"vast"}, provider="skypilot")
    assert {(o.provider, o.cloud) for o in forced.offers} == {("skypilot", "vast")}


def test_clouds_filter_reads_only_those_files():
    result = read_catalog_dir(CATALOG_DIR, clouds={"lambda", "VAST"})
    assert set(result.offers_per_file) == {"lambda.csv", "vast.csv"}
    assert {_cloud(o) for o in result.offers} == {"lambda", "vast"}


def test_rows_that_differ_only_by_zone_become_the_cheapest_offer(tmp_path):
    _write(tmp_path, "aws.csv", [
        "g6.xlarge,L4,1.0,4,16,,0.80,0.30,us-east-1,use1-az1",
        "g6.xlarge,L4,1.0,4,16,,0.80,0.25,us-east-1,use1-az2",
        "g6.xlarge,L4,1.0,4,16,,0.90,0.40,us-east-1,use1-az3",
        "g6.xlarge,L4,1.0,4,16,,0.85,,us-west-2,usw2-az1",
    ])  # fmt: skip
    result = read_catalog_dir(tmp_path)
    prices = {(o.region, o.spot): o.price_per_hour_usd for o in result.offers}
    assert prices == {
        ("us-east-1", False): 0.80,
        ("us-east-1", True): 0.25,
        ("us-west-2", False): 0.85,
    }
    assert result.skipped_rows["same offer in another zone"] == 4


def test_snapshot_zones_are_merged(snapshot):
    # gcp.csv lists A100 x1 in asia-northeast1-a and -c at the same prices.
    matches = [
        o for o in snapshot.offers
        if o.cloud == "gcp" and o.region == "asia-northeast1" and o.gpu_count == 1
        and o.raw["accelerator_name"] == "A100"
    ]  # fmt: skip
    assert sorted((o.spot, o.price_per_hour_usd) for o in matches) == [
        (False, 1.70586),
        (True, 0.9643),
    ]


def test_gcp_accelerator_rows_are_flagged_accelerator_only(snapshot):
    gcp = [o for o in snapshot.offers if o.cloud == "gcp"]
    assert gcp and all(o.raw.get("accelerator_only") is True for o in gcp)
    assert all(o.instance_type is None for o in gcp)
    # H100 x8 (a3-high) and H100-MEGA x8 (a3-mega) are both H100-SXM x8: two offers.
    ids = {o.offer_id: o.price_per_hour_usd for o in gcp}
    assert ids["gcp:8xH100-MEGA:asia-northeast1:ondemand"] == 35.39149
    assert ids["gcp:8xH100:asia-northeast1:ondemand"] < 35.39149
    others = [o for o in snapshot.offers if o.cloud != "gcp"]
    assert not any(o.raw.get("accelerator_only") for o in others)


def test_unknown_gpu_names_are_reported_not_dropped(tmp_path):
    _write(tmp_path, "aws.csv", [
        "x9.large,Imaginary RTX 9999,1.0,8,32,,1.50,0.50,us-east-1,az1",
        "x9.large,Imaginary RTX 9999,1.0,8,32,,1.50,0.50,us-east-1,az2",
        "g6.xlarge,L4,1.0,4,16,,0.80,,us-east-1,az1",
    ])  # fmt: skip
    result = read_catalog_dir(tmp_path)
    assert result.unknown_gpu_names == {"Imaginary RTX 9999": 2}
    assert [o.gpu for o in result.offers] == ["L4"]
    assert result.skipped_rows["unknown GPU name"] == 2


def test_snapshot_has_no_unknown_gpu_names(snapshot):
    assert snapshot.unknown_gpu_names == {}


def test_tpus_and_other_non_cuda_accelerators_are_skipped_with_a_reason(snapshot):
    skipped = snapshot.skipped_accelerators
    assert "TPU" in skipped["tpu-v5p-8"]
    assert "TPU" in skipped["tpu-v6e-1"]  # the rows with 700.0 placeholder prices
    for name in ("Inferentia2", "Trainium", "Gaudi HL-205", "MI300X", "Radeon Pro V520"):
        assert name in skipped
    raw_names = {o.raw["accelerator_name"] for o in snapshot.offers}
    assert not raw_names & set(skipped)
    assert not any(o.gpu.lower().startswith("tpu") for o in snapshot.offers)


def test_rows_without_accelerator_or_price_and_gpu_slices_are_skipped(tmp_path):
    _write(tmp_path, "aws.csv", [
        "m5.large,,,2,8,,0.096,0.04,us-east-1,az1",
        "p5e.48xlarge,H200,8.0,192,2048,,,,us-east-1,az1",
        "g6f.large,L4,0.125,2,8,,0.20,,us-east-1,az1",
        "g6.xlarge,L4,1.0,4,16,,0.80,,us-east-1,az1",
    ])  # fmt: skip
    result = read_catalog_dir(tmp_path)
    assert [o.instance_type for o in result.offers] == ["g6.xlarge"]
    assert result.skipped_rows == {
        "no accelerator": 1,
        "no price": 1,
        "fractional accelerator": 1,
    }


def test_aws_rows_with_empty_price_give_no_offer():
    result = read_catalog_dir(CATALOG_DIR, clouds={"aws"})
    assert result.skipped_rows["no price"] == 10
    with open(CATALOG_DIR / "aws.csv", newline="") as fh:
        unpriced = {r["InstanceType"] for r in csv.DictReader(fh) if not r["Price"]}
    priced = {o.instance_type for o in result.offers if not o.spot}
    assert unpriced and not unpriced & priced


def test_quoted_at_is_the_file_date(tmp_path):
    shutil.copy(CATALOG_DIR / "lambda.csv", tmp_path / "lambda.csv")
    shutil.copy(CATALOG_DIR / "vast.csv", tmp_path / "vast.csv")
    snapshot_day = datetime(2026, 11, 22, tzinfo=timezone.utc)
    os.utime(tmp_path / "lambda.csv", (snapshot_day.timestamp(),) * 2)
    os.utime(tmp_path / "vast.csv", (snapshot_day.timestamp() + 3600,) * 2)
    result = read_catalog_dir(tmp_path)
    assert result.quoted_at == snapshot_day  # the oldest file
    dates = {_cloud(o): o.quoted_at for o in result.offers}
    assert dates["lambda"] == snapshot_day
    assert dates["vast"].timestamp() == snapshot_day.timestamp() + 3600
    assert all(o.quoted_at.tzinfo is not None for o in result.offers)


def test_a_snapshots_quoted_at_file_beats_the_mtimes_of_its_copies(tmp_path):
    """A cloned or copied snapshot's files are dated the day of the copy: QUOTED_AT says
    when the prices were taken (the bundled snapshot: 2026-11-22)."""
    assert read_catalog_dir(CATALOG_DIR).quoted_at == datetime(2026, 11, 22, tzinfo=timezone.utc)
    shutil.copy(CATALOG_DIR / "lambda.csv", tmp_path / "lambda.csv")  # mtime: now
    (tmp_path / "QUOTED_AT").write_text("2026-11-20T06:30:00+01:00\n")
    result = read_catalog_dir(tmp_path)
    taken = datetime(2026, 11, 20, 5, 30, tzinfo=timezone.utc)
    assert result.quoted_at == taken and {o.quoted_at for o in result.offers} == {taken}
    assert read_catalog_dir(tmp_path / "lambda.csv").quoted_at == taken  # one file: its dir's
    (tmp_path / "QUOTED_AT").write_text("last tuesday")
    with pytest.raises(BadInputError, match="QUOTED_AT must hold one ISO date"):
        read_catalog_dir(tmp_path)


def test_vram_per_gpu_survives_each_catalogs_gpuinfo_convention(snapshot):
    def find(cloud: str, instance_type: str) -> Offer:
        return next(
            o for o in snapshot.offers if _cloud(o) == cloud and o.instance_type == instance_type
        )

    # vast writes the whole instance's memory: 2x A100 with 81920 MiB are 40 GB cards.
    two_a100 = find("vast", "2x-A100_SXM4-32-65536")
    assert (two_a100.gpu, two_a100.vram_gib) == ("A100-SXM4-40GB", 40.0)
    assert find("vast", "8x-H100_SXM-32-65536").vram_gib == pytest.approx(79.65)
    # lambda writes one GPU's memory (and a wrong total).
    assert find("lambda", "gpu_8x_v100").vram_gib == 16.0
    # primeintellect writes the instance total: 2x A100 80GB = 163840 MiB.
    assert find("primeintellect", "runpod__2xA100_80GB__16__234").vram_gib == 80.0
    # nebius writes host RAM (200 GiB for one H100): the GPU table's figure is used instead.
    nebius = find("nebius", "gpu-h100-sxm_1gpu-16vcpu-200gb")
    assert nebius.vram_gib == pytest.approx(get_gpu("H100-SXM").vram_mib_driver / 1024, abs=0.01)
    assert nebius.raw["vram_from_table"] is True
    # runpod's GpuInfo is only a name.
    runpod = find("runpod", "1x_A100-80GB_SECURE")
    assert runpod.vram_gib == 80.0 and runpod.raw["vram_from_table"] is True


def test_crlf_and_json_gpuinfo_files_parse(snapshot):
    assert (CATALOG_DIR / "lambda.csv").read_bytes().count(b"\r\n") > 300
    lambda_offers = [o for o in snapshot.offers if o.cloud == "lambda"]
    assert {o.region for o in lambda_offers} >= {"us-east-1", "europe-central-1"}
    assert any(o.cloud == "primeintellect" and o.raw.get("vcpus") for o in snapshot.offers)


def test_skypilot_cache_layout_reads_the_same_as_the_flat_snapshot(tmp_path, snapshot):
    for name in ("aws", "gcp", "lambda"):
        (tmp_path / name).mkdir()
        shutil.copy(CATALOG_DIR / f"{name}.csv", tmp_path / name / "vms.csv")
    (tmp_path / "common").mkdir()
    shutil.copy(CATALOG_DIR / "accelerators.csv", tmp_path / "common" / "accelerators.csv")
    assert set(catalog_files(tmp_path)) == {"aws", "gcp", "lambda"}
    nested = read_catalog_dir(tmp_path)
    assert nested.offers_per_file == {
        "aws/vms.csv": OFFERS_PER_FILE["aws.csv"],
        "gcp/vms.csv": OFFERS_PER_FILE["gcp.csv"],
        "lambda/vms.csv": OFFERS_PER_FILE["lambda.csv"],
    }
    flat = {
        o.key: o.price_per_hour_usd for o in snapshot.offers if o.cloud in {"aws", "gcp", "lambda"}
    }
    assert {o.key: o.price_per_hour_usd for o in nested.offers} == flat


def test_a_missing_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInputError) as info:
        read_catalog_dir(tmp_path / "nope")
    assert info.value.field == "catalog"


def test_fast_constructor_builds_what_model_construct_builds(snapshot):
    construct = _offer_constructor()
    for offer in snapshot.offers[:200]:
        values = dict(offer.__dict__)
        fast, reference = construct(**values), Offer.model_construct(**values)
        assert fast == reference
        assert fast.model_fields_set == reference.model_fields_set


def test_reading_the_snapshot_is_fast():
    rows = sum(p.read_bytes().count(b"\n") - 1 for p in CATALOG_DIR.glob("*.csv"))
    started = time.perf_counter()
    result = read_catalog_dir(CATALOG_DIR)
    elapsed = time.perf_counter() - started
    assert len(result.offers) > 4000
    # ~0.07 s on a laptop-class core (~200k rows/s); the bound only catches a regression
    # to per-row literal_eval or validated construction.
    assert elapsed < 1.0, f"{rows} rows in {elapsed:.2f} s"


# ------------------------------------------------------------------ parse cache


def _offer_keys(result):
    return sorted((o.key, o.price_per_hour_usd, o.gpu, o.vram_gib) for o in result.offers)


def test_parse_cache_gives_the_same_offers_and_is_invalidated_by_edits(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = CATALOG_DIR / "lambda.csv"
    work = tmp_path / "cat"
    work.mkdir()
    (work / "lambda.csv").write_bytes(src.read_bytes())
    first = read_catalog_dir(work)
    cached_files = list((tmp_path / "cache" / "deployctl" / "catalog").glob("*.marshal"))
    assert len(cached_files) == 1 and cached_files[0].stat().st_mode & 0o077 == 0
    second = read_catalog_dir(work)
    assert _offer_keys(first) == _offer_keys(second) and first.offers
    # Edit a price: the cache key changes with size/mtime, so the new price is read.
    text = (work / "lambda.csv").read_text()
    lines = text.splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if ",A10," in line or ",H100," in line)
    fields = lines[row].split(",")
    header = lines[0].strip().split(",")
    fields[header.index("Price")] = "123.45"
    lines[row] = ",".join(fields)
    (work / "lambda.csv").write_text("".join(lines))
    third = read_catalog_dir(work)
    assert any(o.price_per_hour_usd == 123.45 for o in third.offers)


def test_corrupt_cache_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "cat"
    work.mkdir()
    (work / "vast.csv").write_bytes((CATALOG_DIR / "vast.csv").read_bytes())
    expected = _offer_keys(read_catalog_dir(work))
    for cached in (tmp_path / "cache" / "deployctl" / "catalog").glob("*.marshal"):
        cached.write_bytes(b"\x00garbage")
    assert _offer_keys(read_catalog_dir(work)) == expected


def test_spot_filter_is_pushed_into_the_read():
    both = read_catalog_dir(CATALOG_DIR, clouds={"aws"})
    on_demand = read_catalog_dir(CATALOG_DIR, clouds={"aws"}, spot=False)
    spot = read_catalog_dir(CATALOG_DIR, clouds={"aws"}, spot=True)
    assert len(on_demand.offers) + len(spot.offers) == len(both.offers)
    assert not any(o.spot for o in on_demand.offers) and all(o.spot for o in spot.offers)
