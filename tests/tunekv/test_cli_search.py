"""`tunekv search` and `tunekv export` as a user runs them: real arguments, in a subprocess."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid

import optuna
import pytest
import torch
import yaml

from tests.tunekv.run_cli import refused, signalled_search, tunekv

# Simulated trials of qwen3-0.6b on the H100 preset: seconds each, so a whole search fits a test.
SIM = ["--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "30", "--json-lines",
       "--fix", "block_size=16,enable_prefix_caching=on", "--range", "max_num_seqs=8:64"]


def strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def events(stdout: str) -> list[dict]:
    """Every line is a JSON object (NaN is not JSON: jq and other parsers reject it)."""
    return [json.loads(line, parse_constant=strict) for line in stdout.splitlines()]


def search(out, *extra, budget="20s"):
    return tunekv("search", *SIM, "--budget", budget, "--out", str(out), *extra)


def test_search_writes_every_export_resumes_and_exports_again(tmp_path):
    out = tmp_path / "out"
    first = search(out)
    assert first.returncode == 0, first.stderr
    evs = events(first.stdout)
    assert evs[0]["event"] == "start" and evs[0]["trials_before"] == 0 and evs[-1]["event"] == "end"
    trials = [e for e in evs if e["event"] == "trial"]
    assert trials and all(e["fidelity"] == "sim" for e in trials)
    assert evs[-1]["best"]["feasible"] and evs[-1]["elapsed_s"] <= 20 + 5
    ended = " ".join(first.stderr.split("search ended")[1].split())
    if evs[-1]["reason"] == "budget spent" and evs[-1]["elapsed_s"] < 17:   # stopped short of the budget: why
        assert re.search(r"the \d+ s left were too few for another trial", ended), ended
    for name in ("tunekv.yaml", "vllm.yaml", "sglang.yaml", "tgi.env", "report.md", "trials.png", "pareto.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"
    tuned = yaml.safe_load((out / "tunekv.yaml").read_text())
    assert tuned["block_size"] == 16 and tuned["tuned_for"]["fidelity"] == "sim"

    again = search(out, budget="10s")
    assert again.returncode == 0, again.stderr
    assert events(again.stdout)[0]["trials_before"] == len(trials), "the same command must resume the study"

    study = evs[-1]["best"] and first.stderr.split("study ")[1].split()[0]
    storage = f"sqlite:///{out / 'study.db'}"
    vllm = tunekv("export", "--study", study, "--storage", storage, "--format", "vllm")
    assert vllm.returncode == 0, vllm.stderr
    assert yaml.safe_load(vllm.stdout)["model"] == "Qwen/Qwen3-0.6B"
    report = tunekv("export", "--study", study, "--storage", storage, "--format", "report",
                    "--out", str(tmp_path / "r"))
    assert report.returncode == 0 and (tmp_path / "r" / "report.md").is_file()
    bench = tunekv("bench", "--simulate", "--gpu", "h100-80gb", "--config", str(out / "tunekv.yaml"),
                   "--num-requests", "8", "--concurrency", "2")
    assert bench.returncode == 0, bench.stderr
    missing = tunekv("export", "--study", "nope", "--storage", storage, "--format", "tgi")
    assert missing.returncode == 2 and f"studies there: {study}" in missing.stderr


@pytest.mark.parametrize("args, message", [
    (["--budget", "soon"], "--budget takes a duration like 90s, 30m, 2h or 1h30m; got 'soon'"),
    (["--fix", "blok_size=16"], "unknown knob 'blok_size' (did you mean block_size?)"),
    (["--range", "max_num_seqs=64:32"], "--range max_num_seqs=64:32 is empty: 64 > 32"),
    (["--slo", "ttft_p99=fast"], "must be a positive duration"),
    (["--gpu", "h100"], "unknown GPU preset 'h100'"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["--fix", "max_model_len=99999"], "exceeds the model's max_position_embeddings (40960)"),
    (["--storage", "postgresql+psycopg2://tuner:hunter2@127.0.0.1:9/db"], "cannot reach the storage"),
    (["--trace-speedup", "2"], "--trace-speedup scales a trace's arrival times: workload chat has none"),
    (["--trace-speedup", "2", "--rate", "4"], "argument --rate: not allowed with argument --trace-speedup"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, args, message):
    result = tunekv("search", "--model", "qwen3-0.6b", "--gpu", "h100-80gb", "--out", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hunter2" not in result.stderr + result.stdout, "a storage password was printed"


@pytest.mark.alone
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU demonstration: on a GPU the default is qwen3-0.6b")
def test_the_default_search_on_a_fresh_cpu_calibrates_simulates_and_measures(tmp_path):
    result = tunekv("search", "--budget", "60s", "--json-lines", "--out", str(tmp_path / "out"),
                    env={"TUNEKV_HOME": str(tmp_path / "home")}, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "a CPU demonstration" in result.stderr and "model: tiny-llama (the default on a CPU" in result.stderr
    assert "SLO: relaxed, ttft_p99<=2000ms,itl_p99<=100ms (the default on a CPU" in result.stderr
    evs = events(result.stdout)
    assert [e["name"] for e in evs if e["event"] == "stage"][0] == "calibrate"
    done = [e for e in evs if e["event"] == "trial" and e["state"] == "complete"]
    assert sum(e["fidelity"] == "sim" for e in done) >= 5, "the calibration let the simulator rank configs"
    assert sum(e["fidelity"] != "sim" for e in done) >= 1, "a config was measured"
    assert evs[-1]["best"]["fidelity"] != "sim" and (tmp_path / "out" / "vllm.yaml").is_file()
    best_line = next(line for line in result.stderr.splitlines() if line.startswith("best config"))
    assert "gpu_memory_utilization" not in best_line, "a knob the CPU holds, meaning nothing there"


@pytest.mark.parametrize("args, message", [
    (["--budget", "30s"], "--budget 30s is too short to measure anything; a real search needs at least 60s"),
    (["--budget", "3s", "--gpu", "h100-80gb"], "--budget 3s is too short to rank anything; a simulated search "
                                               "needs at least 5s"),
])
def test_a_budget_too_short_for_a_result_is_refused(tmp_path, args, message):
    result = tunekv("search", *args, "--out", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()), "nothing was created"


def test_an_slo_nothing_meets_says_which_constraint_came_closest(tmp_path):
    result = tunekv("search", *SIM, "--slo", "ttft_p99=1ms,itl_p99=1ms", "--budget", "15s", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "no config met the SLO" in result.stderr and "came closest" in result.stderr
    assert not (tmp_path / "vllm.yaml").exists()


def test_ctrl_c_exits_130_within_seconds_and_the_next_run_resumes(tmp_path):
    code, rest, err, waited = signalled_search([*SIM, "--budget", "5m", "--out", str(tmp_path)], signal.SIGINT)
    assert code == 130, err
    assert waited < 10, f"Ctrl-C took {waited:.1f} s"
    assert json.loads(rest.splitlines()[-1])["reason"] == "interrupted"
    resumed = search(tmp_path, budget="8s")
    assert events(resumed.stdout)[0]["trials_before"] >= 1


def run_together(tmp_path, storage: str, study: str, n: int = 2) -> list[subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "tunekv", "search", *SIM, "--budget", "20s", "--storage", storage,
           "--study", study, "--out", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(n)]
    return [subprocess.CompletedProcess(cmd, p.wait(timeout=300), *p.communicate()) for p in procs]


def owners(storage, study: str) -> set[str]:
    study = optuna.load_study(study_name=study, storage=storage)
    return {t.user_attrs["owner"] for t in study.trials if "owner" in t.user_attrs}


def test_two_processes_share_one_journal_file(tmp_path):
    journal = tmp_path / "search.log"
    for result in run_together(tmp_path, f"journal:{journal}", "shared"):
        assert result.returncode == 0, result.stderr
    from tunekv.search.storage import open_storage

    assert len(owners(open_storage(f"journal:{journal}"), "shared")) == 2


def test_two_machines_share_one_postgresql_study(tmp_path):
    url = os.environ.get("TUNEKV_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("TUNEKV_REQUIRE_POSTGRES"):
            pytest.fail("TUNEKV_REQUIRE_POSTGRES is set but TUNEKV_TEST_POSTGRES_URL is not (.ci/run starts one)")
        pytest.skip("no PostgreSQL server: set TUNEKV_TEST_POSTGRES_URL (.ci/run starts one)")
    password = url.split("://", 1)[1].split("@")[0].partition(":")[2]
    study = "shared"
    # A fresh, empty database each time: the two processes also race to create Optuna's tables.
    with fresh_database(url) as fresh:
        results = run_together(tmp_path, fresh, study)
        for result in results:
            assert result.returncode == 0, result.stderr
            assert not password or password not in result.stdout + result.stderr, "the password was printed"
        assert "***" in results[0].stderr, "the URL is shown with its password masked"
        assert len(owners(fresh, study)) == 2


@contextlib.contextmanager
def fresh_database(url: str):
    """A new database next to the one in ``url`` (its role needs CREATEDB), dropped afterwards."""
    import sqlalchemy

    name = f"tunekv_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_a_quantized_search_simulates_an_fp8_cache_and_exports_both(tmp_path):
    out = tmp_path / "out"
    done = search(out, "--quantization", "awq", "--fix", "kv_cache_dtype=fp8", budget="15s")
    assert done.returncode == 0, done.stderr
    assert "awq-quantized as a server loads them" in done.stderr
    vllm = yaml.safe_load((out / "vllm.yaml").read_text())
    assert vllm["quantization"] == "awq" and vllm["kv-cache-dtype"] == "fp8"
    sglang = yaml.safe_load((out / "sglang.yaml").read_text())
    assert sglang["quantization"] == "awq" and sglang["kv-cache-dtype"] == "fp8_e4m3"
    tgi = (out / "tgi.env").read_text()
    assert "QUANTIZE=awq\n" in tgi and "KV_CACHE_DTYPE=fp8_e4m3fn\n" in tgi and "\nDTYPE=" not in tgi
    tuned = yaml.safe_load((out / "tunekv.yaml").read_text())
    assert tuned["quantization"] == "awq" and tuned["kv_cache_dtype"] == "fp8"


@pytest.mark.parametrize("args, message", [
    ([], "--quantization awq: tunekv's engine runs unquantized weights; simulate them (--gpu PRESET or --simulate) "
         "or measure a server that loads them (--server vllm, sglang or tgi)"),
    (["--server", "tunekv"], "--quantization awq: tunekv's engine runs unquantized weights"),
    (["--endpoint", "http://127.0.0.1:9"], "--endpoint measures a deployment as it runs: leave --quantization out"),
    (["--gpu", "h100-80gb", "--quantization", "int4"], "argument --quantization: invalid choice: 'int4'"),
])
def test_quantized_weights_on_tunekvs_engine_are_refused_in_one_sentence(tmp_path, args, message):
    refused("search", "--model", "qwen3-0.6b", "--quantization", "awq", *args, cwd=tmp_path, message=message)
