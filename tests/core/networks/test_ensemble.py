"""The batched decoder: members are independent, masks are fixed, batching equals a loop."""

from __future__ import annotations

import torch

from napari_dropsembles.core.networks.ensemble import DECODER_PARAMS, EnsembleDecoder, sample_member_masks
from tests.conftest import TINY


def _inputs(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3 + TINY.point_features, generator=gen) - 0.5, torch.randn(
        n, TINY.feature_channels, generator=gen
    )


def test_batched_members_equal_single_member_forward():
    decoder = EnsembleDecoder(TINY, members=3, generator=torch.Generator().manual_seed(1))
    decoder.set_masks(sample_member_masks(3, TINY, torch.Generator().manual_seed(2)))
    points, features = _inputs()
    batched = decoder(points, features)
    for m in range(3):
        single = EnsembleDecoder.from_members(TINY, [decoder.member(m)])
        single.set_masks(decoder.member_masks[m : m + 1])
        torch.testing.assert_close(single(points, features)[0], batched[m])


def test_shared_and_per_member_features_agree():
    decoder = EnsembleDecoder(TINY, members=2)
    points, features = _inputs()
    torch.testing.assert_close(decoder(points, features), decoder(points, features[None].expand(2, -1, -1)))
    torch.testing.assert_close(decoder(points, features), decoder(points[None].expand(2, -1, -1), features))


def test_masks_are_fixed_binary_scaled_and_never_empty():
    masks = sample_member_masks(16, TINY, torch.Generator().manual_seed(0), rate=0.9)
    values = torch.unique(masks)
    assert len(values) == 2 and values[0] == 0 and abs(values[1].item() - 10.0) < 1e-5  # kept units x 1/(1-p)
    assert (masks.sum(-1) > 0).all()
    again = sample_member_masks(16, TINY, torch.Generator().manual_seed(0), rate=0.9)
    assert torch.equal(masks, again)
    decoder = EnsembleDecoder(TINY, members=16)
    decoder.set_masks(masks)
    points, features = _inputs()
    first = decoder(points, features)
    torch.testing.assert_close(first, decoder(points, features))  # the same mask every forward pass


def test_dropped_unit_changes_nothing_downstream():
    decoder = EnsembleDecoder(TINY, members=1)
    masks = torch.ones(1, TINY.blocks, TINY.hidden)
    masks[0, -1, 3] = 0
    decoder.set_masks(masks)
    points, features = _inputs()
    before = decoder(points, features)
    with torch.no_grad():
        decoder.out_w[0, 3, 0] += 100.0  # weight reading the dropped unit
    torch.testing.assert_close(before, decoder(points, features))


def test_member_gradients_are_independent():
    decoder = EnsembleDecoder(TINY, members=2)
    with torch.no_grad():
        decoder.fc1_w.normal_(0, 0.1)  # zero at init (identity blocks): give every weight a path
    points, features = _inputs()
    logits = decoder(points, features)
    logits[0].sum().backward()  # loss of member 0 only
    for name in DECODER_PARAMS:
        grad = getattr(decoder, name).grad
        assert torch.count_nonzero(grad[1]) == 0, name
        assert torch.count_nonzero(grad[0]) > 0, name
