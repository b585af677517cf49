"""`tunekv calibrate` and `tunekv bench --simulate` through a subprocess."""

from __future__ import annotations

import json

import pytest

from tests.tunekv.run_cli import tunekv

SMALL = ["--workload", "chat", "--num-requests", "30", "--max-model-len", "2048"]


@pytest.fixture
def home(tmp_path):
    return {"TUNEKV_HOME": str(tmp_path / "home")}


def test_calibrate_then_simulate_this_cpu(home, tmp_path):
    done = tunekv("calibrate", "--model", "tiny-llama", "--budget", "15s", "--workload", "chat", "--max-num-seqs",
                  "16", "--max-model-len", "512", "--json", env=home)
    assert done.returncode == 0, done.stderr
    fit = json.loads(done.stdout)
    assert fit["source"] == "calibrated" and fit["steps"] > 20 and fit["fit"]["samples"] > 20
    out = tmp_path / "sim.json"
    sim = tunekv("bench", "--simulate", "--model", "tiny-llama", *SMALL, "--rate", "5", "--json", str(out), env=home)
    assert sim.returncode == 0, sim.stderr
    assert "Simulated Benchmark Result" in sim.stdout and "SIMULATED" in sim.stdout
    result = json.loads(out.read_text())
    assert result["simulated"] is True and result["device"]["type"] == "simulated"
    assert result["device"]["cost_model"]["source"] == "calibrated"
    assert result["metrics"]["completed"] == 27 and result["metrics"]["output_throughput_tok_s"] > 0


def test_a_real_run_refits_the_calibration(home):
    done = tunekv("bench", "--model", "tiny-llama", "--workload", "chat", "--num-requests", "12", "--offline",
                  "--max-model-len", "2048", "--device", "cpu", env=home)
    assert done.returncode == 0, done.stderr
    assert "step-cost calibration of tiny-llama" in done.stdout and "updated with this run's steps" in done.stdout


def test_simulate_a_gpu_preset_from_a_cpu(home, tmp_path):
    out = tmp_path / "h100.json"
    done = tunekv("bench", "--simulate", "--gpu", "h100-80gb", *SMALL, "--json", str(out), env=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["config"]["model"] == "qwen3-0.6b" and result["device"]["name"] == "NVIDIA H100 80GB HBM3"
    assert result["device"]["cost_model"]["source"] == "defaults" and result["kv"]["num_blocks"] > 10_000


def test_a_small_model_on_a_big_gpu_gets_the_engines_largest_pool(home, tmp_path):
    """tiny-llama's KV per token is tiny: 80 GB would be 18 million blocks of 16; sized from
    memory, the pool is capped at what the engine manages, as a real engine's is."""
    out = tmp_path / "r.json"
    done = tunekv("bench", "--simulate", "--gpu", "h100-80gb", "--model", "tiny-llama", "--num-requests", "4",
                  "--offline", "--json", str(out), env=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["kv"]["num_blocks"] == 1 << 22


@pytest.mark.parametrize("args,message", [
    (["--simulate", "--model", "smollm2-135m"], "no step-cost calibration for smollm2-135m"),
    (["--gpu", "h100-80gb"], "--gpu picks the GPU to simulate: add --simulate"),
    (["--simulate", "--gpu", "b200"], "unknown GPU preset 'b200'"),
    (["--simulate", "--gpu", "l4-24gb", "--model", "llama-3-70b"], "llama-3-70b does not fit on l4-24gb"),
])
def test_simulate_bad_input(home, args, message):
    done = tunekv("bench", *args, "--num-requests", "5", env=home)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_calibrate_bad_budget(home):
    done = tunekv("calibrate", "--budget", "soon", env=home)
    assert done.returncode == 2 and "--budget takes a duration like 90s" in done.stderr


@pytest.mark.parametrize("flag, seed", [([], 5), (["--seed", "7"], 7)])
def test_seed_is_the_configs_unless_given(home, tmp_path, flag, seed):
    """One seed for the requests and the engine: --seed, else the config file's (a search's
    tunekv.yaml holds the seed its requests came from), else 0."""
    config = tmp_path / "tunekv.yaml"
    config.write_text("model: qwen3-0.6b\nseed: 5\n")
    out = tmp_path / "r.json"
    done = tunekv("bench", "--simulate", "--gpu", "h100-80gb", "--config", str(config), "--num-requests", "4",
                  "--concurrency", "2", "--json", str(out), *flag, env=home)
    assert done.returncode == 0, done.stderr
    assert f"4 requests (seed {seed}," in done.stdout
    result = json.loads(out.read_text())
    assert result["config"]["seed"] == seed and result["workload"]["seed"] == seed
