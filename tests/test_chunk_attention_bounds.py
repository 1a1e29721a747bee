"""The O(N) visibility intervals of the chunk mask against the dense mask of the contract."""
import pytest
import torch
from chunk_layouts import packed_rows, random_rows

from jala_kernels import chunk_attention_bounds, chunk_mask
from jala_kernels.chunk_attention_bounds import visible_pairs

HAND_PICKED = {
    "plain causal": (20, [[(20, [])]]),
    "one chunk over the whole document": (20, [[(17, [(0, 17)])]]),
    "chunks at the start and the end of the row": (30, [[(30, [(0, 6), (22, 8)])]]),
    "adjacent chunks and one-token documents": (24, [[(1, []), (1, [(0, 1)]), (12, [(2, 4), (6, 5)]), (1, [])]]),
    "several documents, padding, a row of padding": (40, [[(15, [(3, 9)]), (18, [(0, 4)])], []]),
}


def interval_mask(start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]``: entry (r, c) is True iff start[r] <= c < stop[r]."""
    cols = torch.arange(start.shape[-1])
    return (cols >= start[..., None]) & (cols < stop[..., None])


def layouts():
    yield from (pytest.param(layout, id=name) for name, layout in HAND_PICKED.items())
    for seed in range(12):
        yield pytest.param((97 + 31 * seed, random_rows(3, 97 + 31 * seed, seed, max_doc=60)), id=f"random {seed}")


@pytest.mark.parametrize("layout", layouts())
def test_intervals_equal_the_dense_mask_by_rows_and_by_columns(layout):
    doc_ids, chunk_ids = packed_rows(*layout)
    bounds = chunk_attention_bounds(doc_ids, chunk_ids)
    dense = chunk_mask(doc_ids, chunk_ids)
    assert torch.equal(interval_mask(bounds.key_start, bounds.key_stop), dense)
    assert torch.equal(interval_mask(bounds.query_start, bounds.query_stop), dense.transpose(1, 2))
    assert visible_pairs(bounds) == int(dense.sum())
    assert all(b.dtype == torch.int32 and b.shape == doc_ids.shape for b in bounds)


def test_padding_gets_an_empty_interval_that_widens_no_tile():
    doc_ids, chunk_ids = packed_rows(8, [[(5, [(1, 2)])]])
    bounds = chunk_attention_bounds(doc_ids, chunk_ids)
    assert bounds.key_start[0, 5:].tolist() == [8] * 3 and bounds.key_stop[0, 5:].tolist() == [0] * 3
    assert bounds.query_start[0, 5:].tolist() == [8] * 3 and bounds.query_stop[0, 5:].tolist() == [0] * 3


def test_a_chunk_id_reused_in_another_document_is_two_chunks():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.int32)
    chunk_ids = torch.tensor([[-1, 4, 4, 4, 4, -1]], dtype=torch.int32)
    bounds = chunk_attention_bounds(doc_ids, chunk_ids)
    assert torch.equal(interval_mask(bounds.key_start, bounds.key_stop), chunk_mask(doc_ids, chunk_ids))


@pytest.mark.parametrize("doc_ids, chunk_ids", [
    ([[0, 0, 1, 1, 0]], [[-1, -1, -1, -1, -1]]),   # document 0 resumes after document 1
    ([[0, 0, -1, 0, 0]], [[-1, -1, -1, -1, -1]]),  # padding inside a document
    ([[0, 0, 0, 0, 0]], [[3, 3, -1, 3, -1]]),      # chunk 3 resumes after a causal token
])
def test_layouts_without_contiguous_intervals_are_refused_with_the_fix(doc_ids, chunk_ids):
    with pytest.raises(ValueError, match="row 0: .*contiguous|row 0: .*runs"):
        chunk_attention_bounds(torch.tensor(doc_ids, dtype=torch.int32), torch.tensor(chunk_ids, dtype=torch.int32))


def test_ids_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"doc_ids and chunk_ids must both be \[B, N\]"):
        chunk_attention_bounds(torch.zeros(2, 5, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32))
