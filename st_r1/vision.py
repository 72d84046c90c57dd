"""Vision tower of Qwen2-VL, Qwen2.5-VL and Qwen3-VL, in plain PyTorch.

Pixels arrive as flattened 3-D patches (N, 3*2*P*P; P = 14, or 16 for Qwen3-VL), one row per 2-frame x PxP patch, in
the order Qwen's processor writes them: frame by frame, and inside a frame in 2x2 "merge blocks" (so four consecutive
rows become one language-model token after the merger). Every frame of every image/video attends only within itself;
Qwen2.5-VL additionally restricts most blocks to windows of window_size pixels (its paper, Sec. 2.1.1). Qwen3-VL adds
learned position embeddings resized to each frame's grid and DeepStack: the features of a few intermediate blocks go
through their own mergers and are handed to the decoder's first layers (deepstack_visual_indexes).

What each family uses:   block norm   block MLP              merger            extra
  qwen2_vl               LayerNorm    fc1-quick_gelu-fc2     ln_q, mlp.0/2     -
  qwen2_5_vl             RMSNorm      SwiGLU                 ln_q, mlp.0/2     window attention
  qwen3_vl               LayerNorm    linear_fc1-gelu-fc2    norm, linear_fc*  patch bias, learned positions, DeepStack
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


ACT = {"silu": F.silu, "quick_gelu": quick_gelu, "gelu": F.gelu,
       "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """RoPE (RoFormer eq. 34) in the 'rotate half' layout: pairs are (i, i + d/2)."""
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # normalise in fp32, scale in the input dtype (as the released checkpoints were trained)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class PatchEmbed(nn.Module):
    """The Conv3d of the checkpoints (kernel = stride = 2xPxP) is a Linear over each flattened patch. Only Qwen3-VL's
    has a bias."""

    def __init__(self, in_channels, temporal_patch_size, patch_size, dim, bias=False):
        super().__init__()
        self.proj = nn.Module()  # keeps the checkpoint name patch_embed.proj.weight with the Conv3d shape
        self.proj.weight = nn.Parameter(torch.empty(dim, in_channels, temporal_patch_size, patch_size, patch_size))
        self.proj.bias = nn.Parameter(torch.empty(dim)) if bias else None

    def forward(self, x):
        w = self.proj.weight
        return F.linear(x.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


class VisionAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x, cos, sin, groups):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)
        # rotate in fp32, then back to the dtype qkv computed in (bf16 under autocast; the norm before it may have
        # handed it fp32): q, k, v and so the attention output share one dtype, the buffer's
        q = apply_rope(q.float(), cos, sin).to(v.dtype)
        k = apply_rope(k.float(), cos, sin).to(v.dtype)
        out = torch.empty_like(v)
        # each group is (segments, L) token indices: equal-length segments run as one SDPA batch
        for idx in groups:
            o = F.scaled_dot_product_attention(q[idx].transpose(1, 2), k[idx].transpose(1, 2), v[idx].transpose(1, 2))
            out[idx] = o.transpose(1, 2)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nn.Module):
    """Qwen2-VL: fc1 -> act -> fc2.  Qwen2.5-VL: SwiGLU with biases."""

    def __init__(self, dim, hidden, act, gated):
        super().__init__()
        self.gated, self.act = gated, ACT[act]
        if gated:
            self.gate_proj = nn.Linear(dim, hidden)
            self.up_proj = nn.Linear(dim, hidden)
            self.down_proj = nn.Linear(hidden, dim)
        else:
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(self.act(self.fc1(x)))


class Qwen3VisionMLP(nn.Module):
    """Qwen3-VL: linear_fc1 -> act -> linear_fc2 (Qwen2-VL's MLP under other names, with a given width)."""

    def __init__(self, dim, hidden, act):
        super().__init__()
        self.act = ACT[act]
        self.linear_fc1 = nn.Linear(dim, hidden)
        self.linear_fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_hidden, act, family):
        super().__init__()
        qwen25 = family == "qwen2_5_vl"
        norm = (lambda: RMSNorm(dim, 1e-6)) if qwen25 else (lambda: nn.LayerNorm(dim, eps=1e-6))
        self.norm1, self.norm2 = norm(), norm()
        self.attn = VisionAttention(dim, num_heads)
        self.mlp = (Qwen3VisionMLP(dim, mlp_hidden, act) if family == "qwen3_vl" else
                    VisionMLP(dim, mlp_hidden, act, gated=qwen25))

    def forward(self, x, cos, sin, groups):
        x = x + self.attn(self.norm1(x), cos, sin, groups)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Concatenate each 2x2 block of patch features and project to the language model width."""

    def __init__(self, dim, out_dim, merge, qwen25):
        super().__init__()
        self.ln_q = RMSNorm(dim, 1e-6) if qwen25 else nn.LayerNorm(dim, eps=1e-6)
        hidden = dim * merge * merge
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        x = self.ln_q(x)
        return self.mlp(x.reshape(-1, self.mlp[0].in_features))


class Qwen3Merger(nn.Module):
    """Qwen3-VL's merger: LayerNorm, 2x2 concatenation, fc -> GELU -> fc. The main merger normalises each patch
    before the concatenation; the DeepStack mergers normalise the concatenated vector ("postshuffle")."""

    def __init__(self, dim, out_dim, merge, postshuffle):
        super().__init__()
        self.hidden, self.postshuffle = dim * merge * merge, postshuffle
        self.norm = nn.LayerNorm(self.hidden if postshuffle else dim, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.hidden, self.hidden)
        self.linear_fc2 = nn.Linear(self.hidden, out_dim)

    def forward(self, x):
        x = self.norm(x.reshape(-1, self.hidden)) if self.postshuffle else self.norm(x).reshape(-1, self.hidden)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


def learned_positions(table, grid_thw, merge):
    """Qwen3-VL's absolute positions: the square table (side*side, D) of learned embeddings, resized bilinearly
    (corners aligned) to each frame's patch grid, laid out in the processor's merge-block order, once per frame."""
    side, dim = int(table.shape[0] ** 0.5), table.shape[1]
    square = table.float().reshape(side, side, dim).permute(2, 0, 1)[None]  # (1, D, side, side)
    out = []
    for t, h, w in grid_thw.tolist():
        p = F.interpolate(square, size=(h, w), mode="bilinear", align_corners=True)[0]  # (D, h, w)
        p = p.reshape(dim, h // merge, merge, w // merge, merge).permute(1, 3, 2, 4, 0).reshape(h * w, dim)
        out.append(p.repeat(t, 1))
    return torch.cat(out)


def _grouped(seg):
    """Token indices of each segment id, equal-length segments stacked: list of (n_segments, L) tensors."""
    order = torch.argsort(seg, stable=True)
    counts = torch.bincount(seg)
    starts = torch.cumsum(counts, 0) - counts
    groups = []
    for length in counts.unique().tolist():
        if length > 0:
            s = starts[counts == length]
            groups.append(order[s[:, None] + torch.arange(length, device=seg.device)])
    return groups


def patch_layout(grid_thw, merge, window):
    """Per patch: (h, w) position, frame segment id, window segment id (window in merged units, 0 = no windows)."""
    hw, frames, windows = [], [], []
    n_frames = n_windows = 0
    for t, h, w in grid_thw.tolist():
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        # the processor emits patches in 2x2 merge blocks: (h/m, w/m, m, m) order
        hh = hh.reshape(h // merge, merge, w // merge, merge).transpose(1, 2).flatten()
        ww = ww.reshape(h // merge, merge, w // merge, merge).transpose(1, 2).flatten()
        hw.append(torch.stack([hh, ww], -1).repeat(t, 1))
        frame = torch.arange(t).repeat_interleave(h * w)
        frames.append(frame + n_frames)
        ws = window or max(h, w)
        nwh, nww = math.ceil(h // merge / ws), math.ceil(w // merge / ws)
        win = (hh // merge // ws) * nww + (ww // merge // ws)
        windows.append(n_windows + frame * (nwh * nww) + win.repeat(t))
        n_frames += t
        n_windows += t * nwh * nww
    return torch.cat(hw), torch.cat(frames), torch.cat(windows)


class VisionTower(nn.Module):
    def __init__(self, vc, out_dim, family):
        super().__init__()
        self.family, self.qwen25 = family, family == "qwen2_5_vl"
        dim = vc["embed_dim"] if family == "qwen2_vl" else vc["hidden_size"]
        self.num_heads = vc["num_heads"]
        self.merge = vc.get("spatial_merge_size", 2)
        self.patch_size = vc.get("patch_size", 16 if family == "qwen3_vl" else 14)
        rope = vc.get("rope_parameters") or {}
        self.rope_theta = rope.get("rope_theta", vc.get("rope_theta", 10000.0))
        self.fullatt, self.window = None, 0
        if family == "qwen2_vl":
            act, mlp_hidden = vc.get("hidden_act", "quick_gelu"), int(dim * vc.get("mlp_ratio", 4))
        elif family == "qwen2_5_vl":
            act, mlp_hidden = vc.get("hidden_act", "silu"), vc["intermediate_size"]
            self.fullatt = set(vc.get("fullatt_block_indexes", []))
            self.window = vc.get("window_size", 112) // self.merge // self.patch_size  # in merged tokens
        else:
            act, mlp_hidden = vc.get("hidden_act", "gelu_pytorch_tanh"), vc["intermediate_size"]
        qwen3 = family == "qwen3_vl"
        self.patch_embed = PatchEmbed(vc.get("in_channels", vc.get("in_chans", 3)),
                                      vc.get("temporal_patch_size", 2), self.patch_size, dim, bias=qwen3)
        self.blocks = nn.ModuleList(VisionBlock(dim, self.num_heads, mlp_hidden, act, family)
                                    for _ in range(vc["depth"]))
        self.deepstack_visual_indexes = list(vc.get("deepstack_visual_indexes", (8, 16, 24))) if qwen3 else []
        if qwen3:
            self.pos_embed = nn.Embedding(vc.get("num_position_embeddings", 2304), dim)
            self.merger = Qwen3Merger(dim, out_dim, self.merge, postshuffle=False)
            self.deepstack_merger_list = nn.ModuleList(Qwen3Merger(dim, out_dim, self.merge, postshuffle=True)
                                                       for _ in self.deepstack_visual_indexes)
        else:
            self.merger = PatchMerger(dim, out_dim, self.merge, self.qwen25)

    def rope(self, hw, head_dim):
        """2-D RoPE: the first half of the rotated pairs encodes the row, the second half the column."""
        quarter = torch.arange(0, head_dim // 2, 2, dtype=torch.float32, device=hw.device) / (head_dim // 2)
        inv_freq = 1.0 / self.rope_theta ** quarter
        ang = torch.cat([hw[:, :1] * inv_freq, hw[:, 1:] * inv_freq], -1)
        ang = torch.cat([ang, ang], -1)[:, None, :]  # (N, 1 head, head_dim)
        return ang.cos(), ang.sin()

    def forward(self, pixels, grid_thw):
        """pixels (N, C*T*P*P), grid_thw (n, 3) -> (merged features (N / merge^2, out_dim), DeepStack features: one
        tensor of the same shape per deepstack_visual_indexes entry, in the order of the decoder layers they feed)."""
        device = pixels.device
        hw, frames, windows = (x.to(device) for x in patch_layout(grid_thw, self.merge, self.window))
        x = self.patch_embed(pixels)
        if self.family == "qwen3_vl":
            x = x + learned_positions(self.pos_embed.weight, grid_thw, self.merge).to(x.dtype)
        cos, sin = self.rope(hw.float(), x.shape[-1] // self.num_heads)
        full = _grouped(frames)
        windowed = _grouped(windows) if self.qwen25 else full
        deepstack = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, full if (not self.qwen25 or i in self.fullatt) else windowed)
            if i in self.deepstack_visual_indexes:
                deepstack.append(self.deepstack_merger_list[self.deepstack_visual_indexes.index(i)](x))
        return self.merger(x), deepstack
