"""The torch references against attention written out per sequence, with no paging."""

from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels.helpers import block_tables_for
from tunekv.kernels import paged_decode_attention_ref, reference


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.integers(1, 300), min_size=1, max_size=12), block_size=st.sampled_from([8, 16, 32]),
       group=st.sampled_from([1, 2, 3]), min_saving=st.sampled_from([1, 2000, reference.DECODE_GROUP_MIN_SAVING]),
       seed=st.integers(0, 2**31 - 1))
def test_decode_over_mixed_lengths_equals_each_sequence_attended_alone(lens, block_size, group, min_saving, seed):
    """Sequences of any lengths in any order, attended in one padded batch or in length groups
    (a small ``min_saving`` splits them: 1 gives a group for each distinct length), each get the
    softmax over exactly their own keys."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads, head_dim = 2, 16
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen, dtype=torch.float64)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen, dtype=torch.float64)
    tables = block_tables_for(seed, lens, block_size, num_blocks).cpu()
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen, dtype=torch.float64)
    out = torch.full_like(q, float("nan"))
    with mock.patch.object(reference, "DECODE_GROUP_MIN_SAVING", min_saving):
        paged_decode_attention_ref(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), 0.25, out=out)
    for i, n in enumerate(lens):
        blocks = tables[i, :-(-n // block_size)].long()
        k = k_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].repeat_interleave(group, dim=1)
        v = v_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].repeat_interleave(group, dim=1)
        weights = F.softmax(torch.einsum("hd,nhd->hn", q[i], k) * 0.25, dim=-1)
        expected = torch.einsum("hn,nhd->hd", weights, v)
        torch.testing.assert_close(out[i], expected, rtol=1e-10, atol=1e-10, msg=f"sequence {i} of {lens}")


@settings(max_examples=200, deadline=None)
@given(lens=st.lists(st.integers(1, 4096), min_size=1, max_size=64), work_per_key=st.sampled_from([64, 576, 2048]))
def test_length_groups_partition_the_batch_longest_first(lens, work_per_key):
    groups = reference.decode_length_groups(lens, work_per_key)
    assert sorted(i for g in groups for i in g) == list(range(len(lens)))
    flat = [lens[i] for g in groups for i in g]
    assert flat == sorted(lens, reverse=True), "longest first, so each group pads to its first member"
    if len(set(lens)) == 1:
        assert len(groups) == 1, "equal lengths waste nothing: one batch"


def test_a_chat_like_mix_is_split_and_a_short_uniform_batch_is_not():
    """SmolLM2's 9 heads of 64: 100 keys of padding for 8 sequences is worth a group of its own;
    30 keys over the short ones is not."""
    mixed = [1800, 1700, 60, 50, 40, 30] * 8
    groups = reference.decode_length_groups(mixed, 9 * 64)
    assert [sorted({mixed[i] for i in g}) for g in groups] == [[1800], [1700], [30, 40, 50, 60]]
    assert len(reference.decode_length_groups([300, 290, 280, 270], 9 * 64)) == 1
