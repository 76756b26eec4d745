"""The action denoiser's forward pass, written out, with the observation's keys and values computed once.

The denoiser is a torch ``nn.TransformerDecoder`` (pre-norm layers, GELU, no masks): the action tokens attend
to themselves and cross-attend to the observation tokens. A chunk is sampled in K denoising steps on the same
observation, so each layer's cross-attention keys and values are the same at every step: `memory_keys_values`
computes them once per observation and `decode` runs the layers on them. `decode` is the same arithmetic as
the module's differentiable forward (equal to float rounding, and gradients flow through both), with none of
its per-call checks, which cost more than the small matmuls themselves on a CPU. Dropout is not applied: use
the module itself to train with dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]   # per layer: (B, heads, N_obs, head_dim) keys and values


def check_supported(decoder: nn.TransformerDecoder) -> None:
    """`decode` covers pre-norm layers with GELU and a decoder without a final norm."""
    if decoder.norm is not None:
        raise ValueError("decode: the decoder must not have a final norm")
    for layer in decoder.layers:
        if not layer.norm_first or layer.activation is not F.gelu:
            raise ValueError("decode: the decoder layers must be pre-norm (norm_first) with GELU")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, length, d = x.shape
    return x.view(b, length, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, head_dim) -> (B, L, heads * head_dim)."""
    b, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * head_dim)


def memory_keys_values(decoder: nn.TransformerDecoder, memory: torch.Tensor) -> KeysValues:
    """Each layer's cross-attention keys and values of `memory` (B, N_obs, D)."""
    out = []
    for layer in decoder.layers:
        attention = layer.multihead_attn
        d = memory.shape[-1]
        keys, values = F.linear(memory, attention.in_proj_weight[d:], attention.in_proj_bias[d:]).chunk(2, dim=-1)
        out.append((_heads(keys, attention.num_heads), _heads(values, attention.num_heads)))
    return out


def _cross_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention of (B * R, heads, L, head_dim) queries, R rows per memory row (sample-major), to (B, heads, N,
    head_dim) keys and values. Every query row attends on its own, so a memory row's R x L queries are one
    sequence of queries against its keys: the keys and values are not repeated R times."""
    rows, heads, length, head_dim = q.shape
    batch = keys.shape[0]
    if rows == batch:
        return F.scaled_dot_product_attention(q, keys, values)
    repeats = rows // batch
    q = q.view(batch, repeats, heads, length, head_dim).transpose(1, 2).reshape(batch, heads, repeats * length, head_dim)
    out = F.scaled_dot_product_attention(q, keys, values)
    return out.view(batch, heads, repeats, length, head_dim).transpose(1, 2).reshape(rows, heads, length, head_dim)


def decode(decoder: nn.TransformerDecoder, tokens: torch.Tensor, memory: KeysValues) -> torch.Tensor:
    """decoder(tokens, memory tokens) for (B * R, L, D) `tokens`, R >= 1 rows per memory row (sample-major, e.g.
    the R denoising steps of one observation), given memory_keys_values of the (B, N, D) memory tokens."""
    rows, batch = tokens.shape[0], memory[0][0].shape[0] if memory else tokens.shape[0]
    if rows % batch:
        raise ValueError(f"decode: {rows} token rows are not a whole number of rows per memory row ({batch})")
    x = tokens
    d = x.shape[-1]
    for layer, (keys, values) in zip(decoder.layers, memory, strict=True):
        attention = layer.self_attn
        h = F.layer_norm(x, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k, v = (_heads(part, attention.num_heads)
                   for part in F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1))
        x = x + F.linear(_merge(F.scaled_dot_product_attention(q, k, v)), attention.out_proj.weight,
                         attention.out_proj.bias)
        attention = layer.multihead_attn
        h = F.layer_norm(x, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        q = _heads(F.linear(h, attention.in_proj_weight[:d], attention.in_proj_bias[:d]), attention.num_heads)
        x = x + F.linear(_merge(_cross_attention(q, keys, values)), attention.out_proj.weight,
                         attention.out_proj.bias)
        h = F.layer_norm(x, (d,), layer.norm3.weight, layer.norm3.bias, layer.norm3.eps)
        x = x + layer.linear2(F.gelu(layer.linear1(h)))
    return x
