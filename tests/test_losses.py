"""Loss terms against hand computations."""

import math

import pytest
import torch

from searchr3.losses import info_nce, kl_to_reference, lm_loss, triplet_margin


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    loss = info_nce(q, d, torch.tensor([0, 1]), temperature=0.5)
    c = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(2 * c)))
    l1 = -math.log(math.exp(2) / (math.exp(0) + math.exp(2) + math.exp(2 * c)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, d, torch.tensor([0, 1]), temperature=0)


def test_triplet_uses_hardest_negative_and_exclusions():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert triplet_margin(q, d, torch.tensor([0]), margin=0.5).item() == pytest.approx(0.5 - 1 + 0.6)
    excl = torch.tensor([[False, True, False]])
    assert triplet_margin(q, d, torch.tensor([0]), margin=0.5, exclude=excl).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least one negative"):
        triplet_margin(q, d[:1], torch.tensor([0]))


def test_lm_loss_and_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[-100, -100, 3, 5], [-100, 1, 2, -100]])
    ref = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 1], logits[0, 2], logits[1, 0], logits[1, 1]]), torch.tensor([3, 5, 1, 2])
    )
    assert lm_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_reference(logits, torch.zeros_like(logits), labels).item() > 0
    none = torch.full_like(labels, -100)
    assert lm_loss(logits, none).item() == 0.0


def test_matryoshka_info_nce_averages_the_prefixes():
    from searchr3.losses import matryoshka_info_nce

    torch.manual_seed(1)
    q, d, pos = torch.randn(4, 16), torch.randn(6, 16), torch.tensor([0, 1, 2, 3])
    want = torch.stack([info_nce(q[:, :k], d[:, :k], pos, 0.05) for k in (16, 4, 8)]).mean()
    assert matryoshka_info_nce(q, d, pos, 0.05, [4, 8, 16]).item() == pytest.approx(want.item(), abs=1e-6)
    assert matryoshka_info_nce(q, d, pos, 0.05).item() == pytest.approx(info_nce(q, d, pos, 0.05).item(), abs=1e-7)
    with pytest.raises(ValueError, match="Matryoshka dimensions"):
        matryoshka_info_nce(q, d, pos, 0.05, [32])
