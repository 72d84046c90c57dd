"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL video-language model in plain PyTorch, loading and saving Hugging Face checkpoints.

The vision tower lives in vision.py. Here: the decoder (grouped-query attention, RMSNorm, SwiGLU), multimodal RoPE
(Qwen2-VL paper, Sec. 2.1 "M-RoPE"), a pre-allocated KV cache, and checkpoint I/O. Module names mirror the
Qwen2-VL checkpoint tensor names (model.layers.N.*, visual.*, lm_head.*), so state_dict() is that on-disk layout.

Qwen3-VL (model_type qwen3_vl) differs in four places, each named where it happens:
  - its decoder is Qwen3's: per-head RMSNorm on queries and keys, no q/k/v biases (Attention, `qk_norm`);
  - M-RoPE interleaves the (time, height, width) frequencies instead of giving each axis a block (`mrope_axes`);
  - DeepStack: intermediate vision features are added to the first decoder layers' outputs (`forward`, vision.py);
  - a video is one block of tokens per temporal patch, its timestamp as text before it (`rope_index`, chat.py);
and it is stored as model.language_model.* / model.visual.* (`_disk_name`).
"""
import contextlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.fsdp import FSDPModule

from st_r1.kvcache import KVCache, shared_prefix_attention
from st_r1.vision import RMSNorm, VisionTower, apply_rope

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def text_config(config):
    """Decoder settings: top-level keys (released checkpoints) overridden by text_config (transformers 5)."""
    tc = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    tc.update(config.get("text_config") or {})
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    tc["rope_theta"] = rope.get("rope_theta", tc.get("rope_theta", 1000000.0))
    qwen3 = config.get("model_type") == "qwen3_vl"
    tc["mrope_section"] = rope.get("mrope_section", [24, 20, 20] if qwen3 else [16, 24, 24])
    tc["mrope_interleaved"] = bool(rope.get("mrope_interleaved", qwen3))
    tc["head_dim"] = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    # Qwen2's attention has q/k/v biases and no output bias; Qwen3's has none (or all four, by attention_bias)
    # and normalises each head's queries and keys
    tc["qkv_bias"] = bool(tc.get("attention_bias", False)) if qwen3 else True
    tc["o_bias"] = bool(tc.get("attention_bias", False)) if qwen3 else False
    tc["qk_norm"] = qwen3
    tc["tie_word_embeddings"] = bool(config.get("tie_word_embeddings")) or bool(
        (config.get("text_config") or {}).get("tie_word_embeddings"))
    return tc


class Attention(nn.Module):
    def __init__(self, tc):
        super().__init__()
        dim, self.head_dim = tc["hidden_size"], tc["head_dim"]
        self.n_heads = tc["num_attention_heads"]
        self.n_kv_heads = tc.get("num_key_value_heads") or self.n_heads
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=tc["qkv_bias"])
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=tc["qkv_bias"])
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=tc["qkv_bias"])
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=tc["o_bias"])
        if tc["qk_norm"]:  # Qwen3: RMSNorm over each head's query and key before the rotation
            self.q_norm = RMSNorm(self.head_dim, tc.get("rms_norm_eps", 1e-6))
            self.k_norm = RMSNorm(self.head_dim, tc.get("rms_norm_eps", 1e-6))
        self.qk_norm = tc["qk_norm"]

    def forward(self, x, cos, sin, mask, cache=None, layer=0, start=0):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # rotate in fp32 (cos/sin are fp32), then back to the dtype the projections computed in: under autocast
        # q, k, v and the KV cache all stay bf16 instead of q and k being promoted to fp32 by the rotation
        q, k = apply_rope(q.float(), cos, sin).to(v.dtype), apply_rope(k.float(), cos, sin).to(v.dtype)
        if cache is not None and cache.prefix_k is not None:  # a shared cache: each row stores what it decoded
            if L != 1:
                raise ValueError("a shared KV cache decodes one token at a time")
            at = start - cache.prefix_len
            cache.k[layer][:, :, at:at + 1], cache.v[layer][:, :, at:at + 1] = k, v
            o = shared_prefix_attention(q, cache.prefix_k[layer], cache.prefix_v[layer],
                                        cache.k[layer][:, :, :at + 1], cache.v[layer][:, :, :at + 1], mask, cache.group)
            return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))
        if cache is not None:  # write into the pre-allocated cache, attend over everything so far
            ck, cv = cache.k[layer], cache.v[layer]
            ck[:, :, start:start + L] = k
            cv[:, :, start:start + L] = v
            k, v = ck[:, :, :start + L], cv[:, :, :start + L]
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif L == 1 and self.n_heads > self.n_kv_heads:
            # decoding: the query heads that share a kv head become that head's query rows, so each cached key and
            # value is read once per step instead of once per query head (decoding reads the cache, little else)
            g = self.n_heads // self.n_kv_heads
            o = F.scaled_dot_product_attention(q.view(B, self.n_kv_heads, g, self.head_dim), k, v, attn_mask=mask)
            o = o.view(B, self.n_heads, 1, self.head_dim)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, tc):
        super().__init__()
        dim = tc["hidden_size"]
        self.input_layernorm = RMSNorm(dim, tc.get("rms_norm_eps", 1e-6))
        self.self_attn = Attention(tc)
        self.post_attention_layernorm = RMSNorm(dim, tc.get("rms_norm_eps", 1e-6))
        self.mlp = MLP(dim, tc["intermediate_size"])

    def forward(self, x, cos, sin, mask, cache=None, layer=0, start=0):
        # the cache goes in as an object, not as tensors: FSDP2 wraps a unit's tensor arguments in views, and
        # the GRPO update writes (with autograd on) into the cache in place
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    def __init__(self, tc):
        super().__init__()
        self.embed_tokens = nn.Embedding(tc["vocab_size"], tc["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(tc) for _ in range(tc["num_hidden_layers"]))
        self.norm = RMSNorm(tc["hidden_size"], tc.get("rms_norm_eps", 1e-6))


def mrope_axes(section, interleaved):
    """The position axis (0 time, 1 height, 2 width) that rotates each of the head_dim/2 frequency pairs.
    Qwen2/2.5-VL: contiguous blocks of section[0] time, section[1] height and section[2] width frequencies.
    Qwen3-VL (mrope_interleaved): height takes frequencies 1, 4, 7, ... and width 2, 5, 8, ..., each for its first
    3 * section[axis] frequencies, and time the rest, so that every axis is rotated at high and low frequencies."""
    if not interleaved:
        return torch.repeat_interleave(torch.arange(len(section)) % 3, torch.tensor(section))
    j = torch.arange(sum(section))
    axis = torch.zeros_like(j)
    for a in (1, 2):
        axis[(j % 3 == a) & (j < 3 * section[a])] = a
    return axis


class VideoLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model_type = config.get("model_type")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {self.model_type!r}; expected one of {MODEL_TYPES}")
        tc = text_config(config)
        vc = config["vision_config"]
        self.image_token_id = config["image_token_id"]
        self.video_token_id = config["video_token_id"]
        self.vision_start_token_id = config.get("vision_start_token_id")
        self.spatial_merge_size = vc.get("spatial_merge_size", 2)
        self.temporal_patch_size = vc.get("temporal_patch_size", 2)
        self.tokens_per_second = vc.get("tokens_per_second", 1)
        self.rope_theta, self.mrope_section = tc["rope_theta"], list(tc["mrope_section"])
        self.mrope_interleaved = tc["mrope_interleaved"]
        self.head_dim = tc["head_dim"]
        self.tied = tc["tie_word_embeddings"]
        self.gradient_checkpointing = False  # train_sft.py --grad-checkpoint; decoder layers only, not with a cache
        self.compute_dtype = None  # None: compute in the weights' dtype; bf16 over fp32 weights: st_r1/precision.py
        self.visual = VisionTower(vc, tc["hidden_size"], self.model_type)
        self.patch_size = self.visual.patch_size
        self.model = TextModel(tc)
        self.lm_head = nn.Linear(tc["hidden_size"], tc["vocab_size"], bias=False)
        if self.tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---------------------------------------------------------------- multimodal RoPE
    def rope_index(self, input_ids, mask, image_grid_thw=None, video_grid_thw=None, second_per_grid_ts=None):
        """3-D (time, height, width) positions (3, B, L) over the real tokens, and the next position per row.

        Text tokens advance all three axes together; a vision item of grid (t, h, w) gets positions
        start + (t_index, row, col) on the merged grid; the text after it starts at that item's max + 1.
        Qwen2.5-VL spaces t_index by seconds: t_index = floor(i * second_per_grid * tokens_per_second).
        Qwen3-VL writes a video as t blocks of h*w/4 tokens, each after its timestamp in text, so each temporal patch
        is an item of grid (1, h, w) of its own: time is told by the text, and the positions only order the blocks.
        """
        B, L = input_ids.shape
        pos = torch.ones(3, B, L, dtype=torch.long)
        next_pos = torch.zeros(B, dtype=torch.long)
        videos = [] if video_grid_thw is None else video_grid_thw.tolist()
        if self.model_type == "qwen3_vl":
            videos = [[1, h, w] for t, h, w in videos for _ in range(t)]
        grids = {self.image_token_id: iter([] if image_grid_thw is None else image_grid_thw.tolist()),
                 self.video_token_id: iter(videos)}
        n_videos = 0
        m = self.spatial_merge_size
        for b in range(B):
            real = mask[b].cpu()
            ids = input_ids[b].cpu()[real].tolist()
            chunks, start, i = [], 0, 0
            while i < len(ids):
                if ids[i] in grids:
                    grid = next(grids[ids[i]], None)
                    if grid is None:
                        raise ValueError(f"row {b}: more vision token runs than entries in the grid_thw of token {ids[i]}")
                    t, h, w = grid
                    step = 1.0
                    if ids[i] == self.video_token_id:
                        if self.model_type == "qwen2_5_vl":
                            spg = 1.0 if second_per_grid_ts is None else float(second_per_grid_ts[n_videos])
                            step = spg * self.tokens_per_second
                        n_videos += 1
                    tt = (torch.arange(t) * step).long()
                    p = torch.stack(torch.meshgrid(tt, torch.arange(h // m), torch.arange(w // m), indexing="ij"))
                    p = p.reshape(3, -1)
                    if ids[i:i + p.shape[1]] != [ids[i]] * p.shape[1]:
                        raise ValueError(f"row {b}: grid {grid} needs {p.shape[1]} tokens {ids[i]} in a row at {i}")
                else:
                    j = i
                    while j < len(ids) and ids[j] not in grids:
                        j += 1
                    p = torch.arange(j - i).expand(3, -1)
                chunks.append(p + start)
                start = int(chunks[-1].max()) + 1
                i += p.shape[1]
            if chunks:
                pos[:, b, real] = torch.cat(chunks, 1)
            next_pos[b] = start
        return pos.to(input_ids.device), next_pos.to(input_ids.device)

    def mrope(self, pos):
        """fp32 cos/sin (B, 1, L, head_dim): frequency band j rotates by the position on axis section_of(j)."""
        d = self.head_dim
        inv_freq = 1.0 / self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=pos.device) / d)
        ang = pos[..., None].float() * inv_freq  # (3, B, L, d/2)
        axis = mrope_axes(self.mrope_section, self.mrope_interleaved)
        ang = ang[axis.to(pos.device), :, :, torch.arange(d // 2, device=pos.device)].permute(1, 2, 0)
        ang = torch.cat([ang, ang], -1)[:, None]
        return ang.cos(), ang.sin()

    # ---------------------------------------------------------------- forward
    def _splice(self, x, input_ids, token_id, pixels, grid_thw, deepstack):
        """Replace the embeddings of the placeholder tokens by the vision tower's features, in order. Qwen3-VL's
        DeepStack features are appended to `deepstack` as (placeholder positions, one tensor per decoder layer)."""
        if pixels is None:
            return x
        feats, stack = self.visual(pixels.to(x.device), grid_thw.to(x.device))
        where = input_ids == token_id
        if int(where.sum()) != feats.shape[0]:
            raise ValueError(f"{int(where.sum())} placeholder tokens {token_id} but {feats.shape[0]} vision features")
        if stack:
            deepstack.append((where.nonzero(as_tuple=True), stack))
        return x.masked_scatter(where[..., None], feats.to(x.dtype))

    def autocast(self):
        """torch.autocast to compute_dtype under bf16-mixed on one process or DDP; a no-op context otherwise: fp32,
        pure bf16, and FSDP2, whose MixedPrecisionPolicy hands every module bf16 copies of its fp32 shards."""
        if self.compute_dtype is None or isinstance(self, FSDPModule):
            return contextlib.nullcontext()  # not autocast(enabled=False): a caller's own autocast stays on
        return torch.autocast(self.lm_head.weight.device.type, dtype=self.compute_dtype)

    def new_cache(self, batch_size, max_len, dtype=None, device=None):
        """Empty KV cache. Its dtype follows the compute dtype (bf16 under bf16-mixed, not the fp32 weights'):
        the keys and values written into it are what the projections compute."""
        w = self.lm_head.weight
        dtype, device = dtype or self.compute_dtype or w.dtype, device or w.device
        kv = self.model.layers[0].self_attn.n_kv_heads
        shape = (batch_size, kv, max_len, self.head_dim)
        n = len(self.model.layers)
        return KVCache([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
                       [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
                       torch.zeros(batch_size, max_len, dtype=torch.bool, device=device),
                       torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None, mm_token_type_ids=None,
                cache=None, logits_to_keep=0, logits_at=None):
        """Logits (B, L, V), or (B, k, V) for logits_to_keep=k, or (N, V) at the N True places of a (B, L) bool
        logits_at. mm_token_type_ids is accepted and ignored: the modality is read from the ids. With a cache,
        input_ids are the new tokens only."""
        B, n = input_ids.shape
        past = cache.length if cache is not None else 0
        new_mask = torch.ones(B, n, dtype=torch.bool, device=input_ids.device)
        if attention_mask is not None:
            if attention_mask.shape[1] not in (n, past + n):
                raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns, expected {n} or {past + n}")
            new_mask = attention_mask[:, -n:].bool()
        if past > 0 and (pixel_values is not None or pixel_values_videos is not None):
            raise ValueError("images/videos must come with the prompt (empty cache), not in a decoding step")
        # the matmuls run under autocast when the policy is bf16-mixed (see autocast()); the logits come out in the
        # compute dtype and every loss upcasts them to fp32 first
        with self.autocast():
            x = self.model.embed_tokens(input_ids)
            deepstack = []
            x = self._splice(x, input_ids, self.image_token_id, pixel_values, image_grid_thw, deepstack)
            x = self._splice(x, input_ids, self.video_token_id, pixel_values_videos, video_grid_thw, deepstack)
            if past == 0:
                pos, next_pos = self.rope_index(input_ids, new_mask, image_grid_thw, video_grid_thw, second_per_grid_ts)
            else:  # decoding: positions continue per row from the prompt's last position (the "rope delta")
                pos = (cache.next_pos[:, None] + new_mask.long().cumsum(1) - 1).expand(3, -1, -1)
                next_pos = cache.next_pos + new_mask.sum(1)
            cos, sin = self.mrope(pos)
            if cache is not None:
                if past + n > cache.max_len:
                    raise ValueError(f"KV cache holds {cache.max_len} tokens; {past + n} needed")
                cache.mask[:, past:past + n] = new_mask
                keys = cache.mask[:, :past + n]
                cache.next_pos = next_pos
            else:
                keys = new_mask
            mask = None
            if past > 0 or not bool(keys.all()):
                q_at = torch.arange(past, past + n, device=x.device)[:, None]
                k_at = torch.arange(past + n, device=x.device)[None, :]
                # causal & real keys; a padding query sees itself so its row stays finite (its output is unused)
                mask = ((k_at <= q_at) & keys[:, None, None, :]) | (k_at == q_at)
            remat = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
            for i, layer in enumerate(self.model.layers):
                if remat:  # keep only each layer's input; recompute its activations in the backward (SFT memory)
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, None, i, past, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, mask, cache, i, past)
                for where, stack in deepstack:  # DeepStack: layer i's output gets the vision features of level i
                    if i < len(stack):
                        x = x.index_put(where, stack[i].to(x.dtype), accumulate=True)
            if cache is not None:
                cache.length = past + n
            x = self.model.norm(x)
            if logits_to_keep:
                x = x[:, -logits_to_keep:]
            if logits_at is not None:  # SFT: only the answer's places get logits (the video's are half the row)
                x = x[logits_at]
            return self.lm_head(x)

    # ---------------------------------------------------------------- construction and checkpoints
    @classmethod
    def from_config(cls, config, dtype=None, device=None):
        """Randomly initialised model (normal(0, 0.02) weights, zero biases, unit norms), from torch's RNG.
        Allocated once, in `dtype` on `device`: a bf16 7B never exists in fp32."""
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype or default)
        try:
            with torch.device(device or "cpu"):
                model = cls(config)
        finally:
            torch.set_default_dtype(default)
        for mod in model.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, (RMSNorm, nn.LayerNorm)):
                    nn.init.ones_(p) if name == "weight" else nn.init.zeros_(p)
                elif name == "bias":
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=0.02)
        return model

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None):
        """Build on the meta device, then load each tensor straight to (device, dtype): no fp32 copy of a 7B."""
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: no such file")
        with open(cfg_path) as f:
            config = json.load(f)
        if config.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{cfg_path}: unknown model_type {config.get('model_type')!r}; expected one of {MODEL_TYPES}")
        dtype = dtype or _config_dtype(config)
        with torch.device("meta"):
            model = cls(config)
        expected = model.state_dict()
        if model.tied:
            expected.pop("lm_head.weight")
        loaded = {}
        for file, names in _checkpoint_files(path).items():
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in (names or f.keys()):
                    if name not in f.keys():
                        raise KeyError(f"{file}: tensor {name} listed in the index is not in the file")
                    key = _canonical(name)
                    if model.tied and key == "lm_head.weight":
                        continue  # tied: the embedding is the output layer
                    if key not in expected:
                        raise ValueError(f"{file}: unexpected tensor {name} for {config['model_type']}")
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != tuple(expected[key].shape):
                        raise ValueError(f"{file}: tensor {name} has shape {shape}, expected {tuple(expected[key].shape)}")
                    loaded[key] = f.get_tensor(name).to(device=device or "cpu", dtype=dtype)
        missing = sorted(set(expected) - set(loaded))
        if missing:
            raise KeyError(f"{path}: tensor {missing[0]} missing from the checkpoint ({len(missing)} missing in all)")
        model.load_state_dict(loaded, strict=False, assign=True)
        if model.tied:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval()

    def save_pretrained(self, path):
        """config.json + model.safetensors in the released checkpoints' layout of the family (`_disk_name`), each
        written then renamed."""
        os.makedirs(path, exist_ok=True)
        state = {_disk_name(k, self.model_type): v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                 if not (self.tied and k == "lm_head.weight")}
        tmp = os.path.join(path, "model.safetensors.tmp")
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(path, "model.safetensors"))
        tmp = os.path.join(path, "config.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.config, f, indent=2)
        os.replace(tmp, os.path.join(path, "config.json"))


def _disk_name(key, model_type):
    """Our module names are Qwen2-VL's on-disk names. The released Qwen3-VL checkpoints (and transformers, which
    has no other layout for it) name the decoder model.language_model.* and the vision tower model.visual.*."""
    if model_type != "qwen3_vl":
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return "model." + key if key.startswith("visual.") else key


def _canonical(name):
    """Either layout (transformers-5 in-memory names, or the Qwen2-VL checkpoints') -> our module names."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def _config_dtype(config):
    name = config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get("dtype")
    return getattr(torch, name) if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype) \
        else torch.float32


def _checkpoint_files(path):
    """{file: tensor names or None (= all)} from model.safetensors or model.safetensors.index.json."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return {single: None}
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    files = {}
    for name, shard in weight_map.items():
        file = os.path.join(path, shard)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: shard listed in {index} (tensor {name}) does not exist")
        files.setdefault(file, []).append(name)
    return files
