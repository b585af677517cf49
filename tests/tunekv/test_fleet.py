"""The fleet arithmetic (tunekv.predict.fleet) and GPU prices (tunekv.hardware.gpus), by hand."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tunekv.errors import BadInput
from tunekv.hardware.gpus import (
    gpu_preset,
    gpu_presets,
    parse_price_flags,
    priced_local_device,
    user_prices,
    with_price,
)
from tunekv.predict.fleet import ReplicaCapacity, TargetLoad, fleet_for, what_binds
from tunekv.render.fleet import fleet_cards, fleet_notes, fleet_table
from tunekv.search.fleetplan import FleetPlan, GpuFleet, budget_shares, capacity_markdown


def replica(gpu="h100-80gb", capacity=96.0, unit="users", tok_s=3000.0, e2e=4.0, tp=1, price=3.78):
    return ReplicaCapacity(gpu, capacity, unit, tok_s, e2e, tp, price, "the ITL target (decode step time)")


def test_every_preset_has_a_dated_sourced_price():
    for spec in gpu_presets().values():
        assert spec.price_per_hour_usd is not None and spec.price_per_hour_usd > 0, spec.key
        assert spec.price_source and len(spec.price_date) == 10, spec.key
    assert gpu_preset("h100-80gb").price_per_hour_usd == 3.78


def test_price_overrides_flags_then_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    assert parse_price_flags(["h100-80gb=2.49,l40s-48gb=1", "a100-80gb = 0"]) == {
        "h100-80gb": 2.49, "l40s-48gb": 1.0, "a100-80gb": 0.0}
    (tmp_path / "prices.yaml").write_text("l40s-48gb: 0.99\nh100-80gb: 3\n")
    assert user_prices() == {"l40s-48gb": 0.99, "h100-80gb": 3.0}
    flags = parse_price_flags(["h100-80gb=2.49"])
    assert with_price(gpu_preset("h100-80gb"), flags).price_per_hour_usd == 2.49
    assert with_price(gpu_preset("l40s-48gb"), flags).price_per_hour_usd == 0.99
    assert with_price(gpu_preset("a100-80gb"), flags) == gpu_preset("a100-80gb")


@pytest.mark.parametrize("flag, words", [("h100-80gb=-1", ">= 0"), ("h100-80gb=cheap", "must be a number"),
                                         ("h100-80gb=nan", "must be a number"), ("h100=2", "unknown GPU preset"),
                                         ("h100-80gb", "KEY=USD"),
                                         ("h100-80gb=2,h100-80gb=3", r"two prices \(2 and 3\)")])
def test_bad_prices_are_one_sentence(flag, words):
    with pytest.raises(BadInput, match=words):
        parse_price_flags([flag])


def test_bad_prices_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    (tmp_path / "prices.yaml").write_text("b200: 5\n")
    with pytest.raises(BadInput, match="unknown GPU preset"):
        user_prices()
    (tmp_path / "prices.yaml").write_text("- 1\n")
    with pytest.raises(BadInput, match="must map GPU keys"):
        user_prices()
    (tmp_path / "prices.yaml").unlink()
    (tmp_path / "prices.yaml").mkdir()   # was taken for no prices at all
    with pytest.raises(BadInput, match="prices.yaml is not a file"):
        user_prices()


def test_target_load_parses():
    assert TargetLoad.parse("40rps") == TargetLoad(40.0, "req/s")
    assert TargetLoad.parse("2.5 req/s") == TargetLoad(2.5, "req/s")
    assert TargetLoad.parse("2000users") == TargetLoad(2000.0, "users")
    for bad in ("fast", "0rps", "-3users", "2.5users", "40", "1e99rps", ""):
        with pytest.raises(BadInput, match="--target-load"):
            TargetLoad.parse(bad)


def test_worked_case_llama_3_8b_chat_2000_users():
    """Llama-3-8B, chat, interactive SLO, 2,000 users at peak; per-replica capacities picked by hand:
    an H100 (tp 1) carries 96 users at 3,000 output tok/s, an L40S (tp 1) 40 users at 1,100 tok/s."""
    target = TargetLoad.parse("2000users")
    h100 = fleet_for(target, replica())
    assert (h100.replicas, h100.gpus) == (21, 21)                    # ceil(2000 / 96) = ceil(20.83)
    assert h100.cost_per_hour_usd == pytest.approx(21 * 3.78)       # 79.38
    assert h100.headroom == pytest.approx(21 * 96 / 2000 - 1)       # 0.8%
    assert h100.output_tok_s == pytest.approx(3000 * 2000 / 96)     # 62,500 tok/s
    assert h100.usd_per_million_tokens == pytest.approx(79.38 / (62500 * 3600 / 1e6))   # $0.353
    l40s = fleet_for(target, replica("l40s-48gb", capacity=40, tok_s=1100, price=1.95))
    assert (l40s.replicas, l40s.gpus, l40s.headroom) == (50, 50, 0)
    assert l40s.cost_per_hour_usd == pytest.approx(97.5)
    assert l40s.usd_per_million_tokens == pytest.approx(97.5 / (55000 * 3600 / 1e6))      # $0.492
    assert h100.cost_per_hour_usd < l40s.cost_per_hour_usd
    tp2 = fleet_for(target, replica(capacity=200, tok_s=6000, tp=2))
    assert (tp2.replicas, tp2.gpus) == (10, 20)


def test_users_and_rps_convert_by_littles_law():
    # 96 users at a mean E2E of 4 s send 24 req/s; 40 req/s needs ceil(40 / 24) = 2 replicas.
    row = fleet_for(TargetLoad.parse("40rps"), replica())
    assert row.capacity_per_replica == pytest.approx(24) and row.replicas == 2 and row.unit == "req/s"
    back = fleet_for(TargetLoad.parse("100users"), replica(capacity=24, unit="req/s"))
    assert back.capacity_per_replica == pytest.approx(96) and back.replicas == 2


@given(st.floats(0.5, 500), st.floats(1, 5000), st.floats(1, 5000), st.integers(1, 8))
def test_more_load_never_needs_fewer_gpus(capacity, low, extra, tp):
    r = replica(capacity=capacity, tp=tp)
    small, big = fleet_for(TargetLoad(low, "req/s"), r), fleet_for(TargetLoad(low + extra, "req/s"), r)
    assert big.gpus >= small.gpus and small.headroom >= -1e-9 and small.replicas * capacity >= low * (1 - 1e-9)
    assert math.isclose(small.cost_per_hour_usd, small.gpus * 3.78)


def test_what_binds():
    assert what_binds(3, 10, 100, {"ttft_p99": -0.5}) == "KV memory"
    assert what_binds(0, 100, 100, {"ttft_p99": -0.5}) == "KV memory"
    assert what_binds(0, 10, 100, {"ttft_p99": -0.05, "itl_p99": -0.4, "fits": -1}) == "the TTFT target"
    assert what_binds(0, None, None, {"ttft_p99": -0.5, "itl_p99": -0.1}) == "the ITL target (decode step time)"
    assert what_binds(0, None, None, {}) == "unknown"


def test_a_capped_capacity_binds_nothing_yet_and_a_cpu_fleet_counts_cpus():
    """Every load tried held: the column names the nearest target, not a binding one; ``local`` on
    a machine without a GPU is a fleet of CPUs."""
    def row(gpu: str, name: str, capped: bool) -> GpuFleet:
        r = dataclasses.replace(replica(gpu=gpu, capacity=8.0, tp=1, price=0.25), capacity_capped=capped)
        return GpuFleet(gpu, name, "measured", "", 0.25, "--price", "", "study", {}, r,
                        fleet_for(TargetLoad(20, "users"), r))

    plan = FleetPlan(TargetLoad(20, "users"), "tiny-llama", "chat", "relaxed",
                     [row("local", "cpu", True), row("h100-80gb", "NVIDIA H100 80GB HBM3", False)])
    md = capacity_markdown(plan).splitlines()
    assert "| at least 8 users | 3 x 1 = 3 CPUs |" in md[2] and md[2].endswith(
        "| none yet; nearest: the ITL target (decode step time) |"), md[2]
    assert "| 3 x 1 = 3 GPUs |" in md[3] and md[3].endswith("| the ITL target (decode step time) |"), md[3]
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(fleet_table(plan))
    console.print(fleet_cards(plan))
    text = console.export_text()
    assert "3 x tp1 = 3 CPUs" in text and "3 x tp1 = 3 GPUs" in text
    assert text.count("none yet; nearest: the ITL target") == 2, text

    # A GPU whose search met the SLO with no config has no figures of any kind: its row says so.
    empty = GpuFleet("local", "cpu", "measured", "", 0.25, "--price", "", "study", None, None, None,
                     "no config met the SLO in the search's budget")
    plan = dataclasses.replace(plan, gpus=[*plan.gpus, empty])
    assert capacity_markdown(plan).splitlines()[-1].startswith("| local | - | - |")
    console = Console(width=200, record=True)
    console.print(fleet_table(plan))
    row = next(line for line in console.export_text().splitlines() if "no config met the SLO" in line)
    assert "measured" not in row and row.split()[:3] == ["-", "local", "-"], row
    assert fleet_notes(plan)[2].endswith("(--price); no result")


def test_budget_shares_give_local_half_and_refuse_what_cannot_search():
    assert budget_shares(120, ["h100-80gb", "l40s-48gb"]) == {"h100-80gb": 60, "l40s-48gb": 60}
    assert budget_shares(200, ["h100-80gb", "local", "l40s-48gb"]) == {"h100-80gb": 50, "l40s-48gb": 50, "local": 100}
    assert budget_shares(60, ["local"]) == {"local": 60}
    with pytest.raises(BadInput, match="give at least --budget 120s"):
        budget_shares(119, ["local", "h100-80gb"])
    with pytest.raises(BadInput, match="a simulated search needs at least 5s each; give at least --budget 15s"):
        budget_shares(14, ["h100-80gb", "l40s-48gb", "a100-80gb"])


def test_local_price_flags_then_file_then_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="this device \\(cpu\\) has no preset price; give --price local=USD"):
            priced_local_device({})
    (tmp_path / "prices.yaml").write_text("local: 0.4\n")
    assert priced_local_device({}).price_per_hour_usd == 0.4
    assert priced_local_device({}).price_source == str(tmp_path / "prices.yaml")
    local = priced_local_device({"local": 0.3})
    assert (local.price_per_hour_usd, local.price_source) == (0.3, "--price")
