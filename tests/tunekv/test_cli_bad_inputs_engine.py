"""Engine settings nothing can be served with: refused at start-up with the numbers, as vLLM does
(exit 2, one sentence, nothing written), never accepted with exit 0 or allocated until memory runs out."""

from __future__ import annotations

import pytest

from tests.tunekv.run_cli import refused

SMALL = ["--workload", "chat", "--num-requests", "4", "--model", "tiny-llama", "--device", "cpu"]


@pytest.mark.parametrize("args, message", [
    (["--num-kv-blocks", "1"], "the KV pool (1 blocks of 16 = 16 tokens) cannot hold one max_model_len ("),
    (["--num-kv-blocks", "8", "--max-model-len", "512"], "the KV pool (8 blocks of 16 = 128 tokens) cannot hold one "
                                                         "max_model_len (512) request"),
    (["--num-kv-blocks", "99999999999999"], "num_kv_blocks (99,999,999,999,999) is more than the engine manages"),
    (["--kv-cache-memory-bytes", "1"], "no memory is left for the KV cache"),
    (["--max-model-len", "1"], "workload chat: its shortest request (16 tokens) is longer than 1 tokens"),
    (["--find-capacity", "--slo", "ttft_p99=1s", "--num-kv-blocks", "2", "--block-size", "8", "--max-model-len",
      "256"], "the KV pool (2 blocks of 8 = 16 tokens) cannot hold one max_model_len (256) request"),
])
def test_a_pool_that_cannot_serve_is_refused_with_its_numbers(tmp_path, args, message):
    refused("bench", *SMALL, *args, "--json", "r.json", cwd=tmp_path, message=message, timeout=90)


def test_a_pool_larger_than_the_memory_is_refused_before_it_is_allocated(tmp_path):
    # 4M blocks of 16 tokens of smollm2-135m at 45 KiB a token (fp32): about 2.7 TiB.
    refused("bench", *SMALL[:4], "--model", "smollm2-135m", "--device", "cpu", "--num-kv-blocks", "4000000",
            cwd=tmp_path, message="4,000,000 KV blocks of 16 need 2,746.6 GiB, more than the", timeout=90)
