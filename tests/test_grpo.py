"""GRPO maths on tiny hand-computed tensors (st_r1/grpo.py)."""
import math

import pytest
import torch

from st_r1.grpo import (aggregate, forking_tokens, grpo_loss, group_advantages, k3_kl, repeat_rows, select_rows,
                       temporal_bonus)


def test_group_advantages_hand_computed():
    adv, fz = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 2, eps=0.0)
    s = 1 / math.sqrt(2)  # unbiased std of {0, 1}
    assert torch.allclose(adv, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.0, 0.0]))
    assert fz == pytest.approx(1 / 3)  # the all-equal group carries no signal and is reported


def test_advantage_scales():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    none, _ = group_advantages(r, 2, scale="none")
    assert torch.allclose(none, torch.tensor([0.5, -0.5, 0.0, 0.0]))  # Dr. GRPO: centred only
    batch, fz = group_advantages(r, 2, scale="batch", eps=0.0)
    assert torch.allclose(batch, torch.tensor([1.0, -1.0, 0.0, 0.0]))  # batch std of {1,0,0,0} is 0.5
    assert fz == 0.5
    with pytest.raises(ValueError):
        group_advantages(r, 2, scale="bogus")


def test_k3_kl():
    logp = torch.tensor([-1.0, -2.0, -0.3])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    val = k3_kl(torch.tensor([0.0]), torch.tensor([math.log(2)]))
    assert val.item() == pytest.approx(2 - math.log(2) - 1)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_aggregation_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, m, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "constant", max_len=4).item() == pytest.approx(10 / 8)
    # pieces with global normalisers sum to the whole (micro-batches, ranks)
    for mode in ("seq_mean", "token_mean", "constant"):
        whole = aggregate(x, m, mode, max_len=4)
        parts = sum(aggregate(x[i:i + 1], m[i:i + 1], mode, 4, num_seqs=2, num_tokens=4) for i in range(2))
        assert parts.item() == pytest.approx(whole.item())


def test_clip_gradient_zero_exactly_where_clip_binds():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1]])
    advs = [1.0, 1.0, -1.0, -1.0, 1.0]
    binds = [True, False, True, False, False]
    for j, (a, b) in enumerate(zip(advs, binds)):
        logp = torch.log(ratios[:, j:j + 1]).clone().requires_grad_(True)
        loss, st = grpo_loss(logp, torch.zeros(1, 1), None, torch.tensor([a]), torch.ones(1, 1), 0.2, 0.2, beta=0.0)
        loss.backward()
        if b:
            assert logp.grad.item() == 0.0
            assert st["clip_high" if a > 0 else "clip_low"] == 1.0
        else:
            # d(-rho*A)/dlogp = -rho*A
            assert logp.grad.item() == pytest.approx(-ratios[0, j].item() * a)


def test_mu_1_ratio_is_one_and_beta_term():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]])
    loss, st = grpo_loss(logp, logp.detach(), ref, torch.tensor([2.0]), torch.ones(1, 2), beta=0.5)
    kl = (math.exp(1) - 1 - 1) / 2  # k3 on the second token only, seq mean
    assert loss.item() == pytest.approx(-(2.0 - 0.5 * kl))
    assert st["kl"] == pytest.approx(kl)
    assert st["clip_low"] == st["clip_high"] == 0


def test_mu_greater_than_one_moves_ratio_and_clip_binds():
    """A 3-way categorical policy updated mu=4 times against one fixed pi_old: the ratio leaves 1 and the clip
    (eps=0.2) eventually binds, after which that token's gradient is zero."""
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=2.0)
    tokens = torch.tensor([[0], [1]])
    old = torch.log_softmax(logits.detach(), -1)[tokens]
    adv = torch.tensor([1.0, -1.0])
    ratios = []
    for _ in range(4):
        opt.zero_grad()
        logp = torch.log_softmax(logits, -1)[tokens]
        loss, st = grpo_loss(logp, old, None, adv, torch.ones(2, 1), beta=0.0)
        loss.backward()
        ratios.append(torch.exp(logp - old).detach().view(-1))
        opt.step()
    assert torch.allclose(ratios[0], torch.ones(2))
    assert ratios[1][0] > 1.0 and ratios[1][1] < 1.0
    assert st["clip_high"] > 0 or st["clip_low"] > 0
    assert logits.grad.abs().sum() == 0  # both tokens clipped: no more push


def test_forking_tokens_take_the_policy_gradient_and_the_kl_stays_on_every_token():
    entropy = torch.tensor([[0.01, 0.9, 0.02, 0.0], [0.5, 0.03, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    forks = forking_tokens(entropy, mask, 0.4)  # 5 real tokens: the top 40% are 0.9 and 0.5 (padding never counts)
    assert forks.tolist() == [[False, True, False, False], [True, False, False, False]]
    assert torch.equal(forking_tokens(entropy, mask, 1.0), mask)
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    ref = torch.full((2, 4), -0.5)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.1, pg_mask=forks, pg_tokens=2)
    loss.backward()
    # seq_mean: the policy-gradient term -A / 1 on each sequence's one forking token, / 2 sequences; the KL term
    # (d k3/d logp = 1 - exp(ref - logp)) on every real token, weighted 1/len per sequence
    dkl = 1 - math.exp(0.5)
    want = torch.tensor([[0.1 * dkl / 3, -1.0 + 0.1 * dkl / 3, 0.1 * dkl / 3, 0.0],
                         [1.0 + 0.1 * dkl / 2, 0.1 * dkl / 2, 0.0, 0.0]]) / 2
    assert torch.allclose(logp.grad, want, atol=1e-6)
    # with every token forking it is the plain loss
    full, _ = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.1, pg_mask=mask, pg_tokens=5)
    plain, _ = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.1)
    assert full.item() == pytest.approx(plain.item(), rel=1e-5)


def test_temporal_bonus():
    acc = torch.tensor([1.0, 0.0, 1.0, 1.0])
    shuffled = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.equal(temporal_bonus(acc, shuffled, 2, 0.3), torch.tensor([0.3, 0.0, 0.0, 0.0]))


def test_select_and_repeat_rows_keep_videos_aligned():
    grid = torch.tensor([[1, 2, 2], [2, 2, 2]])
    pv = torch.arange(12.0).view(12, 1)  # 4 patches for row 0, 8 for row 1
    batch = dict(input_ids=torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.ones(2, 2), video_grid_thw=grid,
                 pixel_values_videos=pv, second_per_grid_ts=torch.tensor([1.0, 2.0]))
    one = select_rows(batch, [1])
    assert torch.equal(one["pixel_values_videos"].view(-1), torch.arange(4.0, 12.0))
    rep = repeat_rows(batch, 2)
    assert rep["input_ids"][:, 0].tolist() == [1, 1, 3, 3]
    assert rep["pixel_values_videos"].shape[0] == 24
    assert torch.equal(rep["pixel_values_videos"][4:8].view(-1), torch.arange(4.0))
