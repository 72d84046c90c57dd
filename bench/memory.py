"""GPU memory a training configuration needs, per GPU, computed from the model's config.

    python bench/memory.py                   # the table: Qwen2-VL-2B/7B, Qwen2.5-VL-3B/7B, Qwen3-VL-4B/8B; 1/4/8 GPUs
    python bench/memory.py --model qwen2.5-vl-7b --stage grpo --parallel fsdp --gpus 8 --freeze-vision  # one setup
    python bench/memory.py --model path/to/config.json ...   # any Qwen2-VL / 2.5-VL / 3-VL config.json; --json: JSON
    python bench/memory.py --check           # the activation estimate against peak RSS measured on this CPU (--only)

Per GPU, in the order the breakdown prints it:
  weights      trainable parameters in the policy's param dtype (fp32 master weights; bf16 under --precision bf16),
               frozen ones in bf16 under bf16-mixed (precision.apply); divided by N under FSDP2
  grads        trainable x param bytes; / N under FSDP2; x 2 under DDP (its all-reduce buckets are a second copy)
  adamw        2 x trainable x param bytes (exp_avg, exp_avg_sq); / N under FSDP2
  bf16 weights bf16-mixed on one GPU or DDP: autocast's bf16 copy of every trainable weight matrix, which the
               backward keeps; under FSDP2: the root unit (embeddings, lm_head, merger) and two blocks unsharded
  activations  what autograd keeps, per token of the decoder and per patch of the vision tower, inventoried op by op
               from st_r1/model.py and st_r1/vision.py below; plus the loss's fp32 copies of the logits
  kv cache     GRPO: the rollout's cache (prompts x G rows x (prompt + new tokens)), in the compute dtype
  reference    GRPO with beta > 0: the frozen reference model, whole on every GPU (not sharded), bf16 (fp32 under fp32)
  overhead     1 GiB for the CUDA context and cuBLAS / NCCL workspaces: assumed, not measured (no GPU here)
GRPO's peak is the larger of its two phases: the rollout (no gradients: grpo.update frees them; the KV cache) and
the update (gradients, the update micro-batch's activations and its own KV cache). "fits" leaves 5% of the card to
the allocator's fragmentation.
"""
import argparse
import json
import math
import os
import subprocess
import sys
from collections import namedtuple
from dataclasses import asdict, dataclass, replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import lora, precision  # noqa: E402
from st_r1.model import VideoLM, text_config  # noqa: E402

GB = 1e9

# The released config.json dimensions (Hugging Face model cards, *-Instruct); token ids as released.
_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
_TOKENS = dict(_IDS, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=128000,
               rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
_V2 = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_chans=3, patch_size=14, spatial_merge_size=2,
           temporal_patch_size=2, hidden_act="quick_gelu")
_V25 = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu", tokens_per_second=2)
MODELS = {
    "qwen2-vl-2b": dict(_TOKENS, model_type="qwen2_vl", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                        vision_config=dict(_V2, hidden_size=1536)),
    "qwen2-vl-7b": dict(_TOKENS, model_type="qwen2_vl", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
                        vision_config=dict(_V2, hidden_size=3584)),
    "qwen2.5-vl-3b": dict(_TOKENS, model_type="qwen2_5_vl", vocab_size=151936, hidden_size=2048,
                          intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                          tie_word_embeddings=True, vision_config=dict(_V25, out_hidden_size=2048)),
    "qwen2.5-vl-7b": dict(_TOKENS, model_type="qwen2_5_vl", vocab_size=152064, hidden_size=3584,
                          intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                          tie_word_embeddings=False, vision_config=dict(_V25, out_hidden_size=3584)),
}
# Qwen3-VL nests the decoder in text_config, as its config.json does. Read from copies of the released files (none
# could be downloaded here): Qwen3-VL-8B-Instruct's in huggingface.co/Steinate/Cortex/blame/main/config.json; the 4B's
# text_config in huggingface.co/TechCarbasa/MyModels commit 400bbbf, its vision_config and tied embeddings in
# huggingface.co/amburger66/robometer-4b-lora-robotsmith-task03 (unsloth/Qwen3-VL-4B-Instruct's). Both give the
# released parameter totals exactly (tests/test_precision.py).
_Q3_TEXT = dict(vocab_size=151936, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                attention_bias=False, rms_norm_eps=1e-6, max_position_embeddings=262144, rope_theta=5000000,
                rope_scaling={"rope_type": "default", "mrope_interleaved": True, "mrope_section": [24, 20, 20]})
_Q3_VISION = dict(num_heads=16, in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh")
MODELS.update({
    "qwen3-vl-4b": dict(_IDS, model_type="qwen3_vl", tie_word_embeddings=True,
                        text_config=dict(_Q3_TEXT, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
                        vision_config=dict(_Q3_VISION, depth=24, hidden_size=1024, intermediate_size=4096,
                                           out_hidden_size=2560, deepstack_visual_indexes=[5, 11, 17])),
    "qwen3-vl-8b": dict(_IDS, model_type="qwen3_vl", tie_word_embeddings=False,
                        text_config=dict(_Q3_TEXT, hidden_size=4096, intermediate_size=12288),
                        vision_config=dict(_Q3_VISION, depth=27, hidden_size=1152, intermediate_size=4304,
                                           out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24])),
})


@dataclass
class Setup:
    stage: str = "sft"             # sft | grpo
    parallel: str = "fsdp"         # ddp | fsdp | none
    gpus: int = 8
    precision: str = "bf16-mixed"  # fp32 | bf16-mixed | bf16
    lora_r: int = 0
    freeze_vision: bool = False
    grad_checkpoint: bool = False  # decoder layers only, as train_sft.py --grad-checkpoint
    rows: int = 1                  # SFT: rows per micro-batch on a GPU
    video_tokens: int = 700        # per row, after the 2x2 merge (the authors' 8 frames give ~700)
    text_tokens: int = 336         # per row: question, options, instruction and (SFT) the chain-of-thought answer
    prompts: int = 2               # GRPO: prompts per GPU per rollout
    group_size: int = 8            # G
    new_tokens: int = 256          # GRPO completion length
    micro_batch: int = 8           # GRPO update: completion rows per forward (whole groups)
    beta: float = 0.04             # GRPO KL weight; 0: no reference model
    freeze_lm: bool = False        # --check only: embeddings and lm_head frozen (a 7B vocabulary's grads on a CPU)


def mode_of(s):
    """How the forward computes: fp32; autocast (bf16-mixed, one GPU or DDP); bf16 (pure bf16, or bf16-mixed under
    FSDP2, whose MixedPrecisionPolicy hands every module bf16 weights: the same activations as pure bf16)."""
    if s.precision == "fp32":
        return "fp32"
    if s.precision == "bf16" or (s.parallel == "fsdp" and s.gpus > 1):
        return "bf16"
    return "autocast"


Param = namedtuple("Param", "name numel dim trainable bytes")  # bytes: per element, as precision.apply stores it


_SHAPES = {}


def parameters(config, s):
    """([Param], tied) of the model under the setup, without building it each time: names and shapes come from one
    meta-device build per config; frozen as the scripts freeze (--freeze-vision; LoRA: everything but its adapters,
    r x in and out x r on every decoder q, k, v, o; --check's freeze_lm), stored as precision.apply stores them."""
    key = json.dumps(config, sort_keys=True)
    if key not in _SHAPES:
        m = VideoLM.from_config(config, device="meta")
        _SHAPES[key] = [(n, tuple(p.shape)) for n, p in m.named_parameters()], m.tied
    shapes, tied = _SHAPES[key]
    pol = precision.policy(s.precision)
    pbytes = pol.param_dtype.itemsize
    out = []
    for n, shape in shapes:
        frozen = bool(s.lora_r) or (s.freeze_vision and n.startswith("visual.")) or (
            s.freeze_lm and n in ("model.embed_tokens.weight", "lm_head.weight"))
        out.append(Param(n, math.prod(shape), len(shape), not frozen, 2 if frozen and pol.mixed else pbytes))
        if s.lora_r and n.startswith("model.layers.") and n.endswith("_proj.weight") and \
                n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj"):
            o, i = shape
            out += [Param(n[:-6] + "lora_A", s.lora_r * i, 2, True, pbytes),
                    Param(n[:-6] + "lora_B", o * s.lora_r, 2, True, pbytes)]
    return out, tied


def size(params, trainable=None):
    return sum(p.numel * p.bytes for p in params if trainable is None or p.trainable == trainable)


# ----------------------------------------------------------------------------------------------- activations
# Bytes autograd keeps, per token (decoder) or per patch (vision), one entry per tensor an op saves, read off the
# code and checked tensor by tensor against torch.autograd.graph.saved_tensors_hooks (tests/test_precision.py).
# c: bytes of a matmul output (4 fp32, 2 bf16); r: bytes of the residual stream.

def rms_norm(n, mode, r, weight_fp32, consumers, train_weight=True, grad_in=True, rows=1):
    """RMSNorm(x) = weight * (x32 * rsqrt(mean(x32^2))).to(x.dtype), then the matmuls that read it. Keeps x32
    (fp32), rsqrt (one fp32 per normalised row: per token, or per head for Qwen3's q / k norms), the normalised x
    (r bytes, for the weight's gradient) and the output (fp32 if weight or x is fp32) once for all its consumers;
    under autocast an fp32 output is cast to bf16 again by each consumer matmul, which keeps its own copy."""
    out = 4 if (weight_fp32 or r == 4) else 2
    kept = (consumers * 2 if mode == "autocast" and out == 4 else out) if consumers else 0
    own = n * (4 + (r if train_weight else 0)) + 4 * rows if grad_in else 0
    return own + n * kept


def layer_norm(n, mode, r, consumers=1):
    """nn.LayerNorm keeps its input (r bytes; 0: kept elsewhere already), mean and rstd (fp32); its output as
    rms_norm's (fp32 under autocast on CUDA)."""
    kept = consumers * 2 if mode == "autocast" else {"fp32": 4, "bf16": 2}[mode]
    return n * (r + kept) + 8


def decoder_layer(tc, mode, r, s, first=False):
    """One decoder layer per token. Full: norm (read by q, k, v), Qwen3's per-head q and k norms (read by the
    rotation, which keeps nothing of its own), SDPA's q, k, v, output and log-sum-exp (its output is o_proj's input),
    norm (read by gate, up), SwiGLU's gate, silu(gate), up and their product. LoRA (frozen base, adapters on q, k,
    v, o): frozen norm weights keep no normalised x, frozen gate / up / down keep no inputs, each adapter's A keeps
    its input (the norm's output, as the full layer) and B its r-wide input."""
    d, f, H, hd = tc["hidden_size"], tc["intermediate_size"], tc["num_attention_heads"], tc["head_dim"]
    KV = tc.get("num_key_value_heads") or H
    c = 4 if mode == "fp32" else 2
    trains = not s.lora_r
    w32 = mode != "bf16" and trains  # norm weights stay fp32 unless bf16 or frozen (bf16 under bf16-mixed)
    attn = 2 * c * H * hd + 2 * c * KV * hd + 4 * H
    if tc["qk_norm"]:  # their input is the q / k projection's output (c bytes)
        attn += sum(rms_norm(h * hd, mode, c, w32, 0, train_weight=trains, rows=h) for h in (H, KV))
    if trains:
        return rms_norm(d, mode, r, w32, 3) + attn + rms_norm(d, mode, r, w32, 2) + 4 * c * f
    w32 = mode == "fp32"
    adapters = 4 * c * s.lora_r
    return (rms_norm(d, mode, r, w32, 3, train_weight=False, grad_in=not first) + attn + adapters
            + rms_norm(d, mode, r, w32, 0, train_weight=False) + 3 * c * f)


def vision_patch(vc, mode, family):
    """The vision tower per patch (when it trains): the patch embedding's input pixels (a bf16 cast), 2-D RoPE's
    cos / sin, the attention groups' indices (Qwen3-VL's learned positions keep nothing); per block: norm, SDPA's
    gathered q, k, v, its output, log-sum-exp and the merged output buffer (proj's input), norm, MLP (SwiGLU: 4
    tensors; quick_gelu: fc1 out, sigmoid, product; Qwen3's tanh GELU: fc1 out, GELU out); the merger's norm and its
    GELU's input and output; Qwen3-VL's DeepStack mergers the same, each over 2x2 patches concatenated (its norm's
    input is its block's output, which the next block or the merger keeps already)."""
    D = vc["embed_dim"] if family == "qwen2_vl" else vc["hidden_size"]
    heads, depth = vc["num_heads"], vc["depth"]
    c = 4 if mode == "fp32" else 2
    rv = 4 if mode == "fp32" else 2  # the residual: the patch embedding's output (bf16 under autocast)
    w32 = mode != "bf16"
    attn = 5 * c * D + 4 * heads
    merger = layer_norm(D, mode, rv) + 2 * c * D
    if family == "qwen2_5_vl":
        block = rms_norm(D, mode, rv, w32, 1) + attn + rms_norm(D, mode, rv, w32, 2) + 4 * c * vc["intermediate_size"]
        merger = rms_norm(D, mode, rv, w32, 1) + 2 * c * D
    elif family == "qwen2_vl":
        block = 2 * layer_norm(D, mode, rv) + attn + 3 * c * int(D * vc.get("mlp_ratio", 4))
    else:
        block = 2 * layer_norm(D, mode, rv) + attn + 2 * c * vc["intermediate_size"]
        merger += len(vc.get("deepstack_visual_indexes", (8, 16, 24))) * (layer_norm(4 * D, mode, 0) // 4 + 2 * c * D)
    head_dim = D // heads
    patch = 3 * vc.get("temporal_patch_size", 2) * vc.get("patch_size", 16 if family == "qwen3_vl" else 14) ** 2
    pixels = 0 if mode == "fp32" else patch * 2  # the batch's own fp32 pixels are not counted, their bf16 cast is
    return pixels + 2 * head_dim * 4 + (16 if family == "qwen2_5_vl" else 8) + depth * block + merger


def decoder_token(tc, mode, s, lm_trainable):
    """The decoder per token outside the layers: M-RoPE cos / sin (fp32, shared by the layers), the final norm
    (its output kept by lm_head when lm_head trains)."""
    trains = not s.lora_r  # LoRA freezes the norm's weight (bf16 under bf16-mixed)
    w32 = mode == "fp32" or (mode == "autocast" and trains)
    return 2 * tc["head_dim"] * 4 + rms_norm(tc["hidden_size"], mode, residual_bytes(mode, s), w32,
                                             1 if lm_trainable else 0, train_weight=trains)


def residual_bytes(mode, s):
    """The decoder's residual stream starts as the embedding: fp32 weights give fp32 (also under autocast), bf16
    weights (pure, FSDP2's bf16 copies, or frozen under bf16-mixed) give bf16."""
    frozen_embed = s.lora_r or s.freeze_lm
    return 4 if mode == "fp32" or (mode == "autocast" and not frozen_embed) else 2


OVERHEAD = 2**30  # CUDA context, cuBLAS and NCCL workspaces: assumed
LOGIT_COPIES = 3  # fp32 copies of the logits alive at the loss's peak, in its backward: the log-softmax output it
                  # kept, the gradient the loss hands it and the gradient it passes back (12 bytes per vocabulary
                  # entry per loss token; the forward's fp32 logits are gone by then)


def activations(config, s, tokens, patches, loss_tokens):
    """One forward + backward over `tokens` decoder tokens, `patches` vision patches and `loss_tokens` positions of
    the loss: {decoder, vision: what autograd keeps at the end of the forward; logits: the loss's fp32 copies of the
    logits at its peak; recompute: under --grad-checkpoint, the one layer rebuilt at a time in the backward}."""
    tc, vc, family = text_config(config), config["vision_config"], config["model_type"]
    mode = mode_of(s)
    r, n = residual_bytes(mode, s), tc["num_hidden_layers"]
    layer = [decoder_layer(tc, mode, r, s, first=i == 0) for i in range(n)]
    # --grad-checkpoint keeps each layer's input and recomputes one layer at a time in the backward
    layers = n * r * tc["hidden_size"] if s.grad_checkpoint else sum(layer)
    lm_trainable = not (s.lora_r or s.freeze_lm)
    # DeepStack's additions into the decoder keep the positions of the vision tokens (nonzero's int64 (n, 2)), once
    # for all levels, even with the tower frozen
    deepstack = 16 * patches // vc.get("spatial_merge_size", 2) ** 2 if family == "qwen3_vl" else 0
    return dict(decoder=tokens * (layers + decoder_token(tc, mode, s, lm_trainable)) + deepstack,
                vision=0 if (s.freeze_vision or s.lora_r) else patches * vision_patch(vc, mode, family),
                logits=loss_tokens * tc["vocab_size"] * 4 * LOGIT_COPIES,
                recompute=tokens * max(layer) if s.grad_checkpoint else 0)


def bf16_copies(config, s):
    """Under autocast, (all, kept, one layer's): the bf16 copies of the trainable fp32 matrices, which autocast caches
    until the forward ends; the backward keeps those of the matmuls it differentiates (not the embedding's lookup, nor
    the patch embedding's, whose input needs no gradient; under --grad-checkpoint not the layers', which the
    recompute casts again, one layer at a time)."""
    if mode_of(s) != "autocast":
        return 0, 0, 0
    params, tied = parameters(config, s)
    skip = {"visual.patch_embed.proj.weight", "visual.pos_embed.weight"} | (  # pos_embed: interpolated, no matmul
        {"model.embed_tokens.weight"} if not tied else set())
    mats = {p.name: p.numel * 2 for p in params if p.trainable and p.dim >= 2 and p.bytes == 4 and p.name not in skip}
    in_layers = sum(v for n, v in mats.items() if n.startswith("model.layers."))
    one = in_layers // text_config(config)["num_hidden_layers"]
    return sum(mats.values()), sum(mats.values()) - (in_layers if s.grad_checkpoint else 0), one


def step_peak(a, copies):
    """Activations at the peak of a forward + backward: what the forward keeps, plus the largest of the end of the
    forward (every bf16 copy still cached), the loss (logits copies) and a --grad-checkpoint recompute."""
    all_, kept, one = copies
    return a["decoder"] + a["vision"] + max(all_, kept + a["logits"], kept + a["recompute"] + (one if a["recompute"]
                                                                                             else 0))


# ----------------------------------------------------------------------------------------------- the whole GPU

def estimate(config, s):
    """{component: bytes} per GPU; "total" is the peak."""
    tc = text_config(config)
    params, _ = parameters(config, s)
    mode = mode_of(s)
    fsdp, ddp = s.parallel == "fsdp" and s.gpus > 1, s.parallel == "ddp" and s.gpus > 1
    shard = s.gpus if fsdp else 1
    e = dict(weights=size(params) / shard, grads=size(params, True) / shard * (2 if ddp else 1),
             adamw=2 * size(params, True) / shard, overhead=OVERHEAD)
    if fsdp and s.precision == "bf16-mixed":  # unsharded bf16: the root unit for the whole step, two blocks at a time
        block = lambda n: ".".join(n.split(".")[:3]) if n.startswith(("model.layers.", "visual.blocks.")) else None
        blocks = {}
        for p in params:
            blocks[block(p.name)] = blocks.get(block(p.name), 0) + p.numel * 2
        root = blocks.pop(None)
        e["fsdp bf16 weights"] = root + 2 * max(blocks.values())
    copies = bf16_copies(config, s)
    prompt = s.video_tokens + s.text_tokens
    if s.stage == "sft":
        tokens = s.rows * prompt
        a = activations(config, s, tokens, s.rows * 4 * s.video_tokens, tokens)
        e["activations"] = a["decoder"] + a["vision"]
        e["step peak over them"] = step_peak(a, copies) - e["activations"]  # logits, bf16 copies or a recompute
        e["total"] = sum(e.values())
        return e
    if s.beta:
        e["reference"] = sum(p.numel for p in params if "lora_" not in p.name) * (4 if s.precision == "fp32" else 2)
    kv_per_token = tc["num_hidden_layers"] * 2 * (tc.get("num_key_value_heads") or tc["num_attention_heads"]) \
        * tc["head_dim"] * (4 if mode == "fp32" else 2)
    L, C = prompt, s.new_tokens
    static = sum(e.values())
    # rollout: no gradients (grpo.update frees them); the G-row cache and, while it is repeated, the prompts' own;
    # under autocast every trainable matrix cast once for the whole decode
    e["rollout kv cache"] = (s.prompts * s.group_size + s.prompts) * (L + C) * kv_per_token
    rollout = static - e["grads"] + e["rollout kv cache"] + copies[0]
    # update: one micro-batch of whole groups, each prompt passed once, its cache copied for its G completions
    groups = max(1, s.micro_batch // s.group_size)
    a = activations(config, s, groups * L + s.micro_batch * C, groups * 4 * s.video_tokens, s.micro_batch * C)
    e["update kv cache"] = (groups + s.micro_batch) * (L + C) * kv_per_token
    e["update peak"] = step_peak(a, copies) + e["update kv cache"]
    e["total"] = max(rollout, static + e["update peak"])
    return e


# ----------------------------------------------------------------------------------------------- the table

ROWS = [  # (label, Setup overrides)
    ("SFT, full, DDP", dict(stage="sft", parallel="ddp")),
    ("SFT, full, FSDP2", dict(stage="sft", parallel="fsdp")),
    ("SFT, full, FSDP2, --grad-checkpoint", dict(stage="sft", parallel="fsdp", grad_checkpoint=True)),
    ("SFT, --freeze-vision, FSDP2, --grad-checkpoint", dict(stage="sft", parallel="fsdp", grad_checkpoint=True,
                                                           freeze_vision=True)),
    ("SFT, --lora-r 8 --freeze-vision, DDP", dict(stage="sft", parallel="ddp", lora_r=8, freeze_vision=True)),
    ("SFT, full, FSDP2, --precision fp32", dict(stage="sft", parallel="fsdp", precision="fp32")),
    ("SFT, full, FSDP2, --precision bf16 (pure)", dict(stage="sft", parallel="fsdp", precision="bf16")),
    ("GRPO, full, DDP", dict(stage="grpo", parallel="ddp")),
    ("GRPO, --freeze-vision, FSDP2", dict(stage="grpo", parallel="fsdp", freeze_vision=True)),
    ("GRPO, --lora-r 8 --freeze-vision, DDP", dict(stage="grpo", parallel="ddp", lora_r=8, freeze_vision=True)),
]


def cell(total):
    gb = total / GB
    mark = "✓" if gb <= 0.95 * 80 else ("141" if gb <= 0.95 * 141 else "✗")
    return f"{gb:.0f} {mark}"


def table(base):
    lines = ["| model | configuration | 1 GPU | 4 GPUs | 8 GPUs |", "|---|---|---|---|---|"]
    for name, config in MODELS.items():
        n = sum(p.numel for p in parameters(config, base)[0])
        for label, kw in ROWS:
            cells = [cell(estimate(config, replace(base, gpus=g, **kw))["total"]) for g in (1, 4, 8)]
            lines.append(f"| {name} ({n / 1e9:.2f}B) | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown(config, s):
    e = estimate(config, s)
    width = max(map(len, e))
    return "\n".join(f"{k:<{width}}  {v / GB:8.2f} GB" for k, v in e.items())


# ----------------------------------------------------------------------------------------------- the CPU check

def shaped(name, layers=2, vision_blocks=2):
    """A released model's widths, vocabulary and vision blocks, with few decoder layers and vision blocks (the last
    one full-attention under Qwen2.5-VL; under Qwen3-VL each one feeds DeepStack)."""
    config = json.loads(json.dumps(MODELS[name]))
    (config.get("text_config") or config)["num_hidden_layers"] = layers
    vc = config["vision_config"]
    vc["depth"] = vision_blocks
    if "fullatt_block_indexes" in vc:
        vc["fullatt_block_indexes"] = [vision_blocks - 1]
    if "deepstack_visual_indexes" in vc:
        vc["deepstack_visual_indexes"] = list(range(vision_blocks))
    return config


def _rss(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024


def measure(config, s, t, h, w, text):
    """In this process (run it fresh, with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS): peak RSS
    of one SFT forward + backward over one row (a t x h x w-patch video and `text` tokens) above the RSS before it,
    with the gradients already allocated by a first step, as a training step finds them."""
    import gc
    from st_r1.training import sft_loss
    torch.manual_seed(0)
    pol = precision.policy(s.precision)
    model = VideoLM.from_config(config, dtype=pol.param_dtype)
    if s.freeze_vision:
        model.visual.requires_grad_(False)
    if s.lora_r:
        lora.apply_lora(model, r=s.lora_r)
    if s.freeze_lm:
        model.model.embed_tokens.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    precision.apply(model, pol).train()
    model.gradient_checkpointing = s.grad_checkpoint
    video = t * h * w // 4
    ids = torch.randint(10, 1000, (1, text + video + 2))
    ids[0, 0], ids[0, 1:video + 1], ids[0, video + 1] = (model.vision_start_token_id, model.video_token_id,
                                                         model.vision_start_token_id + 1)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone(),
                 pixel_values_videos=torch.randn(t * h * w, 3 * model.temporal_patch_size * model.patch_size ** 2),
                 video_grid_thw=torch.tensor([[t, h, w]]))
    sft_loss(model, dict(batch), ids.shape[1]).backward()  # allocates the gradients
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()
    gc.collect()
    before = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    sft_loss(model, dict(batch), ids.shape[1]).backward()
    peak = _rss("VmHWM") - before
    s1 = replace(s, parallel="none", gpus=1)
    a = activations(config, s1, ids.shape[1], t * h * w, ids.shape[1])
    return dict(measured=peak, estimate=step_peak(a, bf16_copies(config, s1)), tokens=ids.shape[1],
                patches=t * h * w, **a)


CHECKS = [  # (name, config: "tiny" or a MODELS name, Setup overrides, grid t, h, w, text tokens)
    ("tiny (models/tiny-base)", "tiny", {}, 4, 16, 16, 200),
    ("7B-shaped, 2 layers + 2 vision blocks", "qwen2.5-vl-7b", dict(freeze_lm=True), 2, 16, 16, 200),
    ("Qwen3-VL-8B-shaped, 2 layers + 2 vision blocks", "qwen3-vl-8b", dict(freeze_lm=True), 2, 16, 16, 200),
]


def check(args):
    """Run every (model, precision, grad-checkpoint) of CHECKS (--only: those whose name holds it) in a fresh
    process; a markdown table, a row at a time."""
    print("| model | precision | --grad-checkpoint | tokens / patches | kept by the forward: decoder + vision (MB) | "
          "logits at the loss (MB) | estimate of the step's peak (MB) | measured peak RSS (MB) | estimate / measured "
          "|\n" + "|---" * 9 + "|", flush=True)
    for name, which, kw, t, h, w, text in CHECKS:
        for prec in args.precisions.split(",") if args.only in name else []:
            for gc in (False, True):
                cmd = [sys.executable, os.path.abspath(__file__), "--measure", which, "--precision", prec,
                       "--grid", f"{t},{h},{w}", "--text", str(text)] + (["--grad-checkpoint"] if gc else [])
                cmd += ["--freeze-lm"] if kw.get("freeze_lm") else []
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode:
                    raise RuntimeError(p.stderr[-3000:])
                m = json.loads(p.stdout.strip().splitlines()[-1])
                mb = lambda k: m[k] / 2**20
                print(f"| {name} | {prec} | {'yes' if gc else 'no'} | {m['tokens']} / {m['patches']} | "
                      f"{mb('decoder'):.0f} + {mb('vision'):.0f} | {mb('logits'):.0f} | {mb('estimate'):.0f} | "
                      f"{mb('measured'):.0f} | {m['estimate'] / m['measured']:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="", help=f"one of {', '.join(MODELS)} or a config.json; empty: the table")
    for f, v in asdict(Setup()).items():
        p.add_argument("--" + f.replace("_", "-"), **(dict(action="store_true") if isinstance(v, bool) else
                                                       dict(type=type(v), default=v)))
    p.add_argument("--json", action="store_true", help="with --model: the config and the estimate (bytes) as JSON")
    p.add_argument("--setups", default="", help="with --json: a JSON list of Setup fields, an estimate for each")
    p.add_argument("--check", action="store_true", help="estimate vs peak RSS measured on this CPU")
    p.add_argument("--precisions", default="fp32,bf16-mixed,bf16", help="--check: the policies to measure")
    p.add_argument("--only", default="", help="--check: only the models whose name holds this, e.g. Qwen3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--grid", help=argparse.SUPPRESS)
    p.add_argument("--text", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    s = Setup(**{f: getattr(a, f) for f in asdict(Setup())})
    if a.measure:
        torch.set_num_threads(a.threads)
        config = shaped(a.measure) if a.measure in MODELS else json.load(
            open(os.path.join(ROOT, "models", "tiny-base", "config.json")))
        t, h, w = map(int, a.grid.split(","))
        return print(json.dumps(measure(config, s, t, h, w, a.text)))
    if a.check:
        return check(a)
    if a.model:
        path = a.model if os.path.isfile(a.model) else None
        config = json.load(open(path)) if path else MODELS[a.model.lower()]
        if a.json:  # for other scripts (bench/gpu_check.py): the config, and per setup the bytes of each component
            setups = [replace(s, **kw) for kw in json.loads(a.setups)] if a.setups else [s]
            return print(json.dumps(dict(config=config, setups=[asdict(x) for x in setups],
                                         estimates=[estimate(config, x) for x in setups])))
        return print(breakdown(config, s))
    print(f"GB per GPU; ✓ fits 80 GB, 141: fits only 141 GB, ✗: neither (5% of a card left to fragmentation). "
          f"Default precision bf16-mixed; SFT: {s.rows} row of {s.video_tokens} video + {s.text_tokens} text tokens "
          f"per micro-batch; GRPO: {s.prompts} prompts x G={s.group_size} per GPU, {s.new_tokens} new tokens, "
          f"update micro-batch {s.micro_batch}, reference model bf16.\n")
    print(table(s))


if __name__ == "__main__":
    main()
