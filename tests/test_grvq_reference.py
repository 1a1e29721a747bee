"""The plain-PyTorch GRVQ reference against first principles: planted codes, exact nearest codewords, errors."""
import pytest
import torch

from jala_kernels import grvq_decode, grvq_decode_reference, grvq_encode, grvq_encode_reference


def planted(gen: torch.Generator, n: int, groups: int, stages: int, k: int, group_dim: int):
    """Codebooks whose stage r is scaled by 10^-r, and x made of one codeword per stage: greedy search must
    recover exactly the planted codes (each stage's spacing dwarfs what the later stages can add)."""
    scales = 10.0 ** -torch.arange(stages, dtype=torch.float64)
    books = torch.randn(groups, stages, k, group_dim, generator=gen, dtype=torch.float64) * scales[None, :, None, None]
    codes = torch.randint(0, k, (n, groups, stages), generator=gen)
    x = grvq_decode_reference(codes, books)
    return x, books, codes


def test_planted_codes_are_recovered_and_reconstructed():
    x, books, codes = planted(torch.Generator().manual_seed(0), n=50, groups=2, stages=3, k=9, group_dim=4)
    found, quantized = grvq_encode_reference(x, books)
    assert torch.equal(found, codes)
    torch.testing.assert_close(quantized, x)


def test_every_stage_picks_the_nearest_codeword_by_full_squared_distance():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=gen)
    books = torch.randn(3, 4, 17, 4, generator=gen)
    codes, _ = grvq_encode_reference(x, books)
    residual = x.double().view(64, 3, 4)
    for stage in range(4):
        dist = ((residual[:, :, None, :] - books[None, :, stage].double()) ** 2).sum(-1)   # [N, G, K]
        chosen = dist.gather(2, codes[:, :, stage, None]).squeeze(2)
        assert torch.all(chosen <= dist.min(dim=2).values + 1e-5)
        residual = residual - books[torch.arange(3)[None, :], stage, codes[:, :, stage]].double()


def test_decode_repeats_the_encoders_sum_exactly_in_fp32():
    gen = torch.Generator().manual_seed(2)
    x, books = torch.randn(40, 10, generator=gen), torch.randn(2, 5, 11, 5, generator=gen)
    codes, quantized = grvq_encode_reference(x, books)
    assert codes.dtype == torch.int64 and codes.shape == (40, 2, 5)
    assert torch.equal(grvq_decode_reference(codes, books), quantized)


def test_lowest_index_wins_a_tie():
    books = torch.zeros(1, 1, 4, 2)
    books[0, 0] = torch.tensor([[5.0, 5.0], [1.0, 0.0], [9.0, 9.0], [1.0, 0.0]])
    codes, _ = grvq_encode_reference(torch.tensor([[1.0, 0.0]]), books)
    assert codes.item() == 1


def test_dispatcher_runs_outside_autograd():
    x = torch.randn(8, 4, requires_grad=True)
    books = torch.randn(1, 2, 3, 4, requires_grad=True)
    codes, quantized = grvq_encode(x, books)
    assert not quantized.requires_grad and not grvq_decode(codes, books).requires_grad


@pytest.mark.parametrize("x_shape, books_shape, fix", [
    ((4, 6, 1), (2, 1, 3, 3), "flatten the leading dims"),
    ((4, 7), (2, 1, 3, 3), "make D equal G"),
    ((4, 6), (2, 3, 3), "codebooks must be"),
])
def test_bad_shapes_get_one_clear_error(x_shape, books_shape, fix):
    with pytest.raises(ValueError, match=fix):
        grvq_encode_reference(torch.zeros(x_shape), torch.zeros(books_shape))


def test_codes_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"codes must be \[N, G=2, R=1\]"):
        grvq_decode_reference(torch.zeros(3, 1, 1, dtype=torch.int64), torch.zeros(2, 1, 4, 3))
