"""The flow-matching DiT head alone: it learns a two-mode action distribution, Euler converges, masks hold."""
import pytest
import torch

from jala_ds.config_checks import ConfigError
from jala_ds.model.action_head import FlowMatchingHead
from jala_ds.model.action_head_config import ActionHeadConfig

MODES = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
COND_DIM = 8


def tiny_head(**changes) -> FlowMatchingHead:
    cfg = ActionHeadConfig(**{"layers": 2, "heads": 4, "width": 64, "action_horizon": 1, "action_dim": 2,
                              "state_dim": 1, **changes})
    return FlowMatchingHead(cfg, cond_dim=COND_DIM)


@pytest.fixture(scope="module")
def bimodal_head():
    """A tiny head trained on actions drawn half at (+1, +1), half at (-1, -1), whatever the (constant) input."""
    torch.manual_seed(0)
    head = tiny_head()
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    batch = 128
    cond, state, valid = torch.zeros(batch, 1, COND_DIM), torch.zeros(batch, 1), torch.ones(batch, 1, dtype=torch.bool)
    for _ in range(800):
        actions = MODES[torch.randint(2, (batch,), generator=generator)][:, None]
        loss = head.loss(cond, state, actions, valid, generator=generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head.eval()


def samples(head, n, steps=None, seed=1):
    return head.sample(torch.zeros(n, 1, COND_DIM), torch.zeros(n, 1), steps=steps,
                       generator=torch.Generator().manual_seed(seed))


def test_samples_land_on_both_modes_and_not_between_them(bimodal_head):
    actions = samples(bimodal_head, 1000)[:, 0]
    to_nearest_mode = torch.cdist(actions, MODES).min(dim=1).values
    assert (to_nearest_mode < 0.3).float().mean() > 0.9
    assert (actions.norm(dim=1) < 0.5).float().mean() < 0.05  # the mean of the two modes is not a sample
    share_positive = (actions.sum(dim=1) > 0).float().mean()
    assert 0.35 < share_positive < 0.65


def test_euler_with_more_steps_converges(bimodal_head):
    gaps = [(samples(bimodal_head, 300, steps=n) - samples(bimodal_head, 300, steps=2 * n)).norm(dim=-1).mean()
            for n in (2, 4, 8, 16)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.25 * gaps[0]


def test_the_loss_is_the_mean_squared_velocity_error_over_valid_entries_only():
    head = tiny_head(action_horizon=4)
    cond, state, actions = torch.randn(3, 5, COND_DIM), torch.randn(3, 1), torch.randn(3, 4, 2)
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    per_dim = valid[..., None].repeat(1, 1, 2)
    per_dim[1, :, 1] = False

    def reference(mask):
        """The same draws as the head's loss (times first, then noise), the error averaged by hand."""
        generator = torch.Generator().manual_seed(7)
        t = head.sample_time(3, generator)[:, None, None]
        noise = torch.randn(actions.shape, generator=generator)
        error = (head.velocity(cond, state, (1 - t) * noise + t * actions, t.flatten()) - (actions - noise)).square()
        return error[mask.expand_as(error)].mean()

    for mask, full in ((valid, valid[..., None]), (per_dim, per_dim)):
        loss = head.loss(cond, state, actions, mask, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(loss, reference(full))
    nothing = head.loss(cond, state, actions, torch.zeros_like(valid))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_shapes_dtypes_and_the_time_distribution():
    head = tiny_head(action_horizon=3)
    cond, state = torch.randn(2, 4, COND_DIM), torch.randn(2, 1)
    noised, time = torch.randn(2, 3, 2), torch.rand(2)
    assert head.velocity(cond, state, noised, time).shape == (2, 3, 2)
    chunk = head.sample(cond, state, steps=3)
    assert chunk.shape == (2, 3, 2) and chunk.dtype == torch.float32
    loss = head.loss(cond, state, torch.randn(2, 3, 2), torch.ones(2, 3, dtype=torch.bool))
    assert loss.shape == () and loss.dtype == torch.float32
    head.to(torch.bfloat16)
    assert head.sample(cond, state, steps=2).dtype == torch.float32  # bf16 weights, float32 chunk out

    times = head.sample_time(20000, torch.Generator().manual_seed(0))
    assert torch.equal(times, head.sample_time(20000, torch.Generator().manual_seed(0)))
    assert times.max() <= 1.0 and times.min() >= (0.999 - 1.0) / 0.999
    # (0.999 - Beta(1.5, 1)) / 0.999 leans towards the noise end: E[Beta(1.5, 1)] = 0.6, so E[t] ~ 0.4.
    assert abs(times.mean().item() - (0.999 - 0.6) / 0.999) < 0.01


def test_bad_shapes_and_configs_are_clear_errors():
    head = tiny_head(action_horizon=3)
    with pytest.raises(ValueError, match=r"\[B, 3, 2\]"):
        head.velocity(torch.randn(2, 4, COND_DIM), torch.randn(2, 1), torch.randn(2, 4, 2), torch.rand(2))
    with pytest.raises(ValueError, match="state_dim"):
        head.velocity(torch.randn(2, 4, COND_DIM), torch.randn(2, 5), torch.randn(2, 3, 2), torch.rand(2))
    with pytest.raises(ValueError, match="valid has shape"):
        head.loss(torch.randn(2, 4, COND_DIM), torch.randn(2, 1), torch.randn(2, 3, 2), torch.ones(2, 2, dtype=bool))
    with pytest.raises(ConfigError, match="action_head.width"):
        ActionHeadConfig(width=100, heads=32).validate()
    with pytest.raises(ConfigError, match="action_head.layers"):
        ActionHeadConfig(layers=1).validate()
