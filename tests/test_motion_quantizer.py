"""The tokenizer's GRVQ bottleneck: EMA codebooks converge to cluster means, dead codes restart, gradients pass."""
import torch

from jala_ds.motion.quantizer import GroupedResidualQuantizer
from jala_kernels import grvq_encode

CENTRES = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]])


def clustered(n_per_cluster: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (CENTRES[:, None, :] + 0.3 * torch.randn(4, n_per_cluster, 2, generator=gen)).reshape(-1, 2)


def quantizer(codes: int, decay: float, threshold: float) -> GroupedResidualQuantizer:
    q = GroupedResidualQuantizer(dim=2, groups=1, stages=1, codes=codes, ema_decay=decay,
                                 dead_code_threshold=threshold).train()
    q.ema_counts.fill_(1.0)   # start every code alive, so only the behaviour under test can restart one
    return q


def test_ema_moves_each_codeword_to_the_mean_of_its_assigned_vectors():
    q = quantizer(codes=4, decay=0.8, threshold=0.0)
    q.codebooks[0, 0] = CENTRES + 1.0           # one codeword near each cluster, off-centre
    q.ema_sums.copy_(q.codebooks * q.ema_counts[..., None])
    data = clustered(200, 0)
    for _ in range(60):
        q(data)
    means = data.view(4, 200, 2).mean(dim=1)
    torch.testing.assert_close(q.codebooks[0, 0], means, atol=1e-3, rtol=0)


def test_dead_codes_restart_onto_the_data_and_come_into_use():
    data = clustered(100, 1)
    used = {}
    for threshold in (0.0, 0.5):
        torch.manual_seed(0)
        q = quantizer(codes=8, decay=0.5, threshold=threshold)
        q.codebooks[0, 0, :4] = CENTRES
        q.codebooks[0, 0, 4:] = 100.0           # far from every input: never picked without a restart
        q.ema_sums.copy_(q.codebooks * q.ema_counts[..., None])
        for _ in range(20):
            q(data)
        used[threshold] = grvq_encode(data, q.codebooks)[0].unique().numel()
    assert used[0.0] == 4
    assert used[0.5] == 8


def test_straight_through_forward_is_quantized_and_backward_is_identity():
    q = quantizer(codes=4, decay=0.9, threshold=0.0).eval()
    z = clustered(5, 2).requires_grad_()
    out = q(z)
    torch.testing.assert_close(out.quantized.detach(), grvq_encode(z.detach(), q.codebooks)[1])
    (out.quantized * torch.arange(40.0).view(20, 2)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(40.0).view(20, 2))
    assert out.restarted == 0 and out.codes.shape == (20, 1, 1)


def test_first_step_puts_every_codeword_on_the_data():
    # Counts start at zero: a codeword that inputs chose becomes their mean, every other one restarts on an input.
    q = GroupedResidualQuantizer(dim=2, groups=1, stages=2, codes=6, ema_decay=0.9, dead_code_threshold=0.1).train()
    data = clustered(50, 3)
    chosen = q(data).codes[:, 0, 0]
    for code, word in enumerate(q.codebooks[0, 0]):
        assigned = data[chosen == code]
        if len(assigned):
            torch.testing.assert_close(word, assigned.mean(dim=0), atol=1e-4, rtol=1e-4)
        else:
            assert (data == word).all(dim=1).any()
