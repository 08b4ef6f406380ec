"""The frozen trunk: re-encoding documents through the top layers only equals the full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchr3.trunk import DocumentTrunk, TrunkCacheWarning, cached_trunk

DOCS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "proteins fold",
    "rain",
    "a longer passage about search engines and how they rank",
]


def test_trunk_encoder_equals_the_full_forward_after_the_top_layer_changes(tiny):
    trunk, emb = DocumentTrunk.build(tiny, DOCS, 1, batch_size=2)
    np.testing.assert_allclose(emb, tiny.encode_document(DOCS), atol=1e-5)  # the build's embeddings are the usual ones
    assert len(trunk.prefix) >= 8 and [len(s) for s in trunk.states] == [
        len(x) - len(trunk.prefix) for x in tiny.prompt_ids(DOCS, "document")
    ]
    encode = trunk.encoder(tiny, batch_size=3)
    np.testing.assert_allclose(encode([0, 1, 2, 3, 4]), emb, atol=1e-5)
    layers = tiny.decoder_and_head()[0].layers
    with torch.no_grad():  # what training the top layer does: the trunk path follows it exactly
        for p in layers[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = tiny.encode_document(DOCS)
    assert np.abs(moved - emb).max() > 1e-2
    np.testing.assert_allclose(encode([4, 2, 0]), moved[[4, 2, 0]], atol=1e-5)
    with torch.no_grad():  # a change below the trunk's layer is not seen: the states are the old layers'
        for p in layers[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert np.abs(encode([0, 1, 2, 3, 4]) - tiny.encode_document(DOCS)).max() > 1e-3
    assert len(layers) == 2  # the decoder's own layer list is restored after every call


def test_encode_from_layer_rejects_a_layer_out_of_range(tiny):
    trunk, _ = DocumentTrunk.build(tiny, DOCS[:2], 1)
    with pytest.raises(ValueError, match="layer must be in"):
        tiny.encode_from_layer(2, trunk.prefix, trunk.states)


def test_cached_trunk_is_written_read_back_and_rebuilt_when_damaged(tiny, tmp_path):
    trunk, emb = cached_trunk(tiny, DOCS, 1, key="k1", cache_dir=tmp_path)
    assert emb is not None and (tmp_path / "trunk-k1.safetensors").is_file()
    again, emb2 = cached_trunk(tiny, DOCS, 1, key="k1", cache_dir=tmp_path)
    assert emb2 is None and all(torch.equal(a, b) for a, b in zip(trunk.states, again.states))
    np.testing.assert_allclose(again.encoder(tiny)([0, 3]), emb[[0, 3]], atol=1e-5)
    (tmp_path / "trunk-k1.safetensors").write_bytes(b"not a trunk")
    with pytest.warns(TrunkCacheWarning, match="unusable"):
        rebuilt, emb3 = cached_trunk(tiny, DOCS, 1, key="k1", cache_dir=tmp_path)
    assert emb3 is not None and len(rebuilt.states) == len(DOCS)
    with pytest.warns(TrunkCacheWarning, match="another model"):  # same file name, other corpus: not used
        assert DocumentTrunk.load(tmp_path / "trunk-k1.safetensors", "k1", len(DOCS) + 1) is None
