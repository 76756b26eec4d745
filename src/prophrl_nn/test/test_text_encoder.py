"""prophrl_nn.text_encoder: instructions -> one token each, by their words (case and , . ignored)."""

import torch

from prophrl_nn.text_encoder import HashedBagOfWords


def test_an_instruction_becomes_the_mean_of_its_words_embeddings():
    torch.manual_seed(0)
    encoder = HashedBagOfWords(out_dim=8, buckets=64)
    tokens = encoder(["Lift the cube.", "lift, the cube", "open the door", ""])
    assert tokens.shape == (4, 1, 8)
    assert torch.equal(tokens[0], tokens[1])
    assert not torch.allclose(tokens[0], tokens[2])
    words = encoder(["lift", "the", "cube"])
    torch.testing.assert_close(tokens[0, 0], words[:, 0].mean(0))
