"""The trainable text encoder shared by the VLA policy and the reward judge: instruction -> one token."""

from __future__ import annotations

import zlib

import torch
from torch import nn


class HashedBagOfWords(nn.Module):
    """Instruction -> one token: words hashed into buckets, mean of trainable embeddings."""

    def __init__(self, out_dim: int, buckets: int = 4096):
        super().__init__()
        self.buckets = buckets
        self.embedding = nn.EmbeddingBag(buckets, out_dim, mode="mean")

    def forward(self, instructions: list[str]) -> torch.Tensor:  # -> (B, 1, D)
        ids, offsets = [], []
        for text in instructions:
            offsets.append(len(ids))
            words = text.lower().replace(",", " ").replace(".", " ").split() or [""]
            ids += [zlib.crc32(w.encode()) % self.buckets for w in words]
        device = self.embedding.weight.device
        out = self.embedding(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))
        return out.unsqueeze(1)
