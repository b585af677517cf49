"""`tunekv search` against real servers: `tunekv serve` launched per config (--server tunekv and a
--server-cmd template), a running deployment (--endpoint), failures as infeasible trials, and no
server process left behind after the command, Ctrl-C included."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from tests.tunekv.processes import gone, running_with
from tests.tunekv.run_cli import refused, tunekv
from tests.tunekv.serve_process import ServeProcess, get, post

SMALL = """description: short requests for the server search tests
num_requests: 24
prompt_len: {dist: uniform, min: 16, max: 64}
output_len: {dist: uniform, min: 8, max: 24}
arrival: {rate: 4.0}
"""
# A handful of configs: the simulator covers them in seconds, so a server starts soon.
FEW_CONFIGS = ["--fix", "block_size=16,enable_prefix_caching=on,kv_policy=paged,max_num_batched_tokens=2048",
               "--range", "max_num_seqs=4:8"]
HEALTHY = re.compile(r"answered healthy after \d+ s \(pid (\d+), port (\d+)")


def workload(tmp_path: Path) -> str:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return str(path)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def server_pids(evs: list[dict]) -> list[int]:
    return [int(m.group(1)) for e in evs if e["event"] == "note" and (m := HEALTHY.search(e["message"]))]


def test_a_budgeted_search_on_tunekv_serve_exports_a_config_that_serves(tmp_path):
    out = tmp_path / "out"
    done = tunekv("search", "--server", "tunekv", "--workload", workload(tmp_path), "--range", "max_num_seqs=4:16",
                  "--budget", "100s", "--out", str(out), "--json-lines", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    evs = events(done.stdout)
    measured = [e for e in evs if e["event"] == "trial" and e["fidelity"] != "sim"]
    assert measured and evs[-1]["best"]["fidelity"] in ("real", "certified") and evs[-1]["best"]["feasible"]
    assert all(e["predicted"] is not None for e in measured), "every server measurement sits beside its prediction"
    pids = server_pids(evs)
    assert len(pids) >= len(measured), "each measured trial launched its own server"
    assert all(gone(pid) for pid in pids) and not running_with(str(out)), "a server outlived the search"
    assert sorted(p.name for p in (out / "servers").glob("trial-*.log"))
    tuned = yaml.safe_load((out / "tunekv.yaml").read_text())
    assert tuned["tuned_for"]["measured_on"] == "tunekv serve 0.1.0"
    assert "measured on tunekv serve 0.1.0 on this device" in (out / "vllm.yaml").read_text()
    assert "they were not measured on vLLM" in (out / "vllm.yaml").read_text()
    # what was measured is what is exported: the trial's own config file is the export, less tuned_for
    best = evs[-1]["best"]["number"]
    launched = yaml.safe_load((out / "servers" / f"trial-{best}.yaml").read_text())
    assert launched == {k: v for k, v in tuned.items() if k != "tuned_for"}
    with ServeProcess("--config", str(out / "tunekv.yaml")) as server:
        status, body = post(server.url + "/v1/completions", {"model": "tiny-llama", "prompt": [1, 2, 3],
                                                             "max_tokens": 4, "ignore_eos": True})
        assert status == 200 and body["usage"]["completion_tokens"] == 4


def test_servers_that_cannot_start_or_die_under_load_are_infeasible_trials_with_their_log(tmp_path):
    """A --server-cmd template (only max_num_seqs is searched): above 8 sequences it 'runs out of
    memory' at start-up; the first server that answers is killed as soon as it serves requests."""
    out = tmp_path / "out"
    template = (f"sh -c 'if [ {{max_num_seqs}} -gt 8 ]; then echo \"torch.OutOfMemoryError: CUDA out of memory\" "
                f">&2; exit 1; fi; exec {sys.executable} -m tunekv serve --model tiny-llama --max-num-seqs "
                "{max_num_seqs} --host {host} --port {port}'")
    cmd = [sys.executable, "-m", "tunekv", "search", "--server-cmd", template, "--workload", workload(tmp_path),
           "--range", "max_num_seqs=4:16", "--startup-timeout", "40s", "--budget", "120s", "--out", str(out),
           "--json-lines"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines, killed = [], None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = HEALTHY.search(json.loads(line).get("message", ""))
            if found and killed is None:
                killed = int(found.group(1))
                kill_when_serving(killed, int(found.group(2)))
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.wait(timeout=60) == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    evs = events("".join(lines))
    trials = {e["number"]: e for e in evs if e["event"] == "trial" and e["fidelity"] != "sim"}
    oom = [t for t in trials.values() if "ran out of memory during start-up" in t["reason"]]
    assert oom and all(t["point"]["max_num_seqs"] == 16 and not t["feasible"] for t in oom), trials
    assert all("CUDA out of memory" in t["reason"] and "trial-" in t["reason"] for t in oom)
    died = [t for t in trials.values() if "exited during the load" in t["reason"]]
    assert len(died) == 1 and not died[0]["feasible"], trials
    best = evs[-1]["best"]
    assert best is not None and best["feasible"] and best["point"]["max_num_seqs"] <= 8, "the search went on"
    assert all(gone(pid) for pid in server_pids(evs))


def kill_when_serving(pid: int, port: int, within: float = 60.0) -> None:
    """SIGKILL ``pid`` once its server has produced output tokens (its /metrics say so)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, body = get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        tokens = re.search(rb"^tunekv:generation_tokens_total\{[^}]*\} (\S+)", body, re.MULTILINE)
        if status == 200 and tokens and float(tokens.group(1)) > 0:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError("the server never served a token")


def test_ctrl_c_stops_the_running_server_too(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tunekv", "search", "--server", "tunekv", "--workload", workload(tmp_path),
           *FEW_CONFIGS, "--budget", "5m", "--out", str(out), "--json-lines"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None
        pid = None
        for line in proc.stdout:
            found = HEALTHY.search(json.loads(line).get("message", ""))
            if found:
                pid = int(found.group(1))
                break
        assert pid is not None, "no server started"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    assert gone(pid) and not running_with(str(out)), "Ctrl-C left a server running"


def test_a_running_deployments_capacity_under_the_slo(tmp_path):
    with ServeProcess("--model", "tiny-llama", "--max-num-seqs", "8") as server:
        out = tmp_path / "out"
        done = tunekv("search", "--endpoint", server.url, "--workload", workload(tmp_path), "--budget", "90s",
                      "--out", str(out), "--json-lines", timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        evs = events(done.stdout)
        measured = [e for e in evs if e["event"] == "trial"]
        fidelities = [e["fidelity"] for e in measured]
        assert fidelities[0] == "real" and set(fidelities[1:]) == {"certified"}, measured
        assert all(e["point"] == {} and e["predicted"] is None for e in measured), "nothing to tune or predict"
        # certified at the capacity, or (fresh seeds missing there) at the next lower load that held
        best = evs[-1]["best"]
        assert best["fidelity"] == "certified" and 1 <= best["capacity"] <= measured[0]["capacity"], best
        assert evs[-1]["reason"] == "ladder finished"
        assert "capacity" in done.stderr and "model: tiny-llama (the deployment's" in done.stderr
        assert "--format report" in done.stderr and "--format vllm" not in done.stderr, "the hint is one that works"
        assert (out / "report.md").is_file() and not (out / "vllm.yaml").exists()
        assert f"measured on the deployment at {server.url}/v1" in (out / "report.md").read_text()
        storage = f"sqlite:///{out / 'study.db'}"
        [study] = optuna.get_all_study_names(storage)
        export = tunekv("export", "--study", study, "--storage", storage, "--format", "vllm")
        assert export.returncode == 2 and "measured a running deployment's capacity" in export.stderr


def test_server_flags_that_contradict_or_cannot_work_are_one_sentence(tmp_path):
    py = sys.executable
    cases = [
        (["--server", "tunekv", "--endpoint", "http://127.0.0.1:9"], "--server and --endpoint exclude each other"),
        (["--server", "tunekv", "--simulate"], "measures a server; --simulate and --gpu only simulate"),
        (["--health", "/ready"], "--health goes with --server-cmd"),
        (["--server-cmd", f"{py} -m x --port {{port}} --n {{nope}}"], "has the placeholder {nope}"),
        (["--server-cmd", f"{py} -m x --n 3"], "must take the port tunekv picks"),
        (["--server-cmd", "no-such-server-program --port {port}"], "no-such-server-program is not a program on PATH"),
        (["--server-cmd", f"{py} -m tunekv serve --port {{port}} --max-num-seqs {{max_num_seqs}}", "--fix",
          "block_size=16"], "has no block_size to tune (knobs it takes: max_num_seqs)"),
        (["--server", "tunekv", "--startup-timeout", "soon"], "--startup-timeout takes a duration like 90s"),
        (["--endpoint", "http://127.0.0.1:9", "--startup-timeout", "5m"], "--startup-timeout goes with --server or"),
        (["--server", "tgi"], "text-generation-launcher is not on PATH"),
    ]
    for args, message in cases:
        refused("search", "--budget", "2m", *args, cwd=tmp_path, message=message)
