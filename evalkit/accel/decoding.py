"""GPT-2 decoding with a key-value cache allocated once, one slot per row.

The plain path (:class:`evalkit.generation.PlainCache` over transformers' forward) keeps a
left-padded cache that grows by a concatenation at every step, is concatenated again when a
request joins and re-indexed when a row leaves: copies of the whole cache, besides
transformers' per-layer Python. Here each row owns a slot of a cache allocated for the
model's whole context: a step writes one position per slot in place, a request that joins is
prefilled straight into free slots, a row that leaves frees its slot. The forward pass is
GPT-2's own math in a few ops per layer, and the output layer runs only at each row's last
position (a prefill needs no logits for the prompt's other tokens).

The math is the plain path's; outputs differ by rounding. :class:`evalkit.generation.Decoder`
compares the two on the first prompts it sees and keeps the plain path where they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2LMHeadModel


def supports(model) -> bool:
    """Whether ``model`` is a plain GPT-2 this module computes exactly: no adapters, no
    cross-attention, the tanh GELU, the usual attention scaling, eval mode."""
    if type(model) is not GPT2LMHeadModel or model.training:
        return False
    config = model.config
    return (
        config.scale_attn_weights
        and not config.scale_attn_by_inverse_layer_idx
        and not config.reorder_and_upcast_attn
        and not config.add_cross_attention
        and all(type(b.mlp.act) in (NewGELUActivation, GELUTanh) for b in model.transformer.h)
    )


class SlotCache:
    """A running batch of rows, each in its own slot of a preallocated cache.

    :meth:`prefill` adds rows, :meth:`step` feeds each row one token, :meth:`keep` lets rows
    go; rows are numbered in the order they were added, less those let go (the order of
    :class:`evalkit.generation.Decoder`'s rows). Each returns or takes one entry per row.
    """

    def __init__(self, model, slots: int = 8):
        config, body = model.config, model.transformer
        self.heads = config.n_head
        self.context = config.n_positions
        self.eps = config.layer_norm_epsilon
        self.wte, self.wpe, self.ln_f = body.wte.weight, body.wpe.weight, body.ln_f
        self.head = model.lm_head.weight
        self.blocks = body.h
        self.device, self.dtype = self.wte.device, self.wte.dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)
        self.rows: list[int] = []  # the slot of each row
        self._grow(slots)

    def _grow(self, slots: int) -> None:
        """Room for ``slots`` rows (the cache is copied once, when it must grow)."""
        have = self.lengths.numel()
        if slots <= have:
            return
        slots = max(slots, 2 * have)
        dim = self.wte.shape[1] // self.heads
        shape = (slots, self.heads, self.context, dim)
        grown = []
        for old in self.keys + self.values:
            new = torch.zeros(shape, dtype=self.dtype, device=self.device)
            new[:have] = old
            grown.append(new)
        if not grown:
            grown = [
                torch.zeros(shape, dtype=self.dtype, device=self.device)
                for _ in range(2 * len(self.blocks))
            ]
        self.keys, self.values = grown[: len(self.blocks)], grown[len(self.blocks) :]
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(slots - have)])

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Add one row per prompt (its tokens); the logits of each one's next token."""
        taken = set(self.rows)
        free = [s for s in range(self.lengths.numel()) if s not in taken]
        if len(free) < len(prompts):
            self._grow(len(self.rows) + len(prompts))
            free = [s for s in range(self.lengths.numel()) if s not in taken]
        slots = free[: len(prompts)]  # the lowest: a step runs over slots 0..highest
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        lengths = torch.tensor([len(p) for p in prompts])
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        positions = torch.arange(width, device=self.device)
        # causal, and only the prompt's own tokens (right padding)
        mask = (positions[None, :] <= positions[:, None])[None] & (
            positions[None, None, :] < lengths[:, None, None]
        )
        index = torch.tensor(slots, device=self.device)
        hidden = self._forward(ids, positions.expand(len(prompts), -1), mask[:, None], index)
        self.lengths[index] = lengths
        self.rows += slots
        last = hidden[torch.arange(len(prompts), device=self.device), lengths - 1]
        return self._logits(last)

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; the logits of the token after it, one row each."""
        top = max(self.rows) + 1
        rows = torch.tensor(self.rows, device=self.device)
        ids = torch.zeros(top, dtype=torch.long, device=self.device)
        ids[rows] = torch.tensor(tokens, device=self.device)
        positions = self.lengths[:top].clone()  # a free slot computes at 0, to be overwritten
        width = int(positions.max()) + 1
        mask = torch.arange(width, device=self.device)[None, :] <= positions[:, None]
        hidden = self._forward(ids[:, None], positions[:, None], mask[:, None, None], None)
        self.lengths[rows] += 1
        return self._logits(hidden[rows, 0])

    def keep(self, rows: list[int]) -> None:
        """Keep these rows (their numbers), in this order; free the others' slots."""
        kept = [self.rows[i] for i in rows]
        gone = sorted(set(self.rows) - set(kept))
        if gone:
            self.lengths[torch.tensor(gone, device=self.device)] = 0
        self.rows = kept

    def _forward(self, ids, positions, mask, slots) -> torch.Tensor:
        """GPT-2's blocks over ``ids`` (rows, time) at ``positions``.

        With ``slots`` (a prefill), row i's keys and values go to slot ``slots[i]`` from time 0
        and it attends to its own tokens; without (a step), row i is slot i, its one key and
        value go to its position and it attends to its slot's cache up to there.
        """
        rows, time = ids.shape
        width = mask.shape[-1]
        x = F.embedding(ids, self.wte) + F.embedding(positions, self.wpe)
        x = x.view(rows * time, -1)
        every = torch.arange(rows, device=self.device)
        for block, keys, values in zip(self.blocks, self.keys, self.values):
            attn, mlp = block.attn, block.mlp
            h = F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, self.eps)
            qkv = torch.addmm(attn.c_attn.bias, h, attn.c_attn.weight)
            q, k, v = qkv.view(rows, time, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            if slots is not None:
                keys[slots, :, :time] = k
                values[slots, :, :time] = v
            else:
                keys[every, :, positions[:, 0]] = k[:, :, 0]
                values[every, :, positions[:, 0]] = v[:, :, 0]
                k, v = keys[:rows, :, :width], values[:rows, :, :width]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.transpose(1, 2).reshape(rows * time, -1)
            x = torch.addmm(attn.c_proj.bias, out, attn.c_proj.weight).add_(x)
            h = F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, self.eps)
            h = F.gelu(torch.addmm(mlp.c_fc.bias, h, mlp.c_fc.weight), approximate="tanh")
            x = torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight).add_(x)
        return x.view(rows, time, -1)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.layer_norm(hidden, hidden.shape[-1:], self.ln_f.weight, self.ln_f.bias, self.eps)
        return F.linear(hidden, self.head).float()
