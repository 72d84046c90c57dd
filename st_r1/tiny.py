"""The tiny default model of st-r1: a byte-level BPE tokenizer trained on the synthetic world's text and a randomly
initialised Qwen2.5-VL (or Qwen2-VL, or Qwen3-VL: --family) small enough to train on a CPU. Both are written as
Hugging Face folders, so every script (and transformers) reads them exactly like a released checkpoint.

    python -m st_r1.tiny --out data/tiny [--family qwen2_vl|qwen2_5_vl|qwen3_vl]
"""
import argparse
import json
import os

# Qwen's chat and vision special tokens (same strings, our own small ids), then the reasoning tags as
# ordinary added tokens: they stay single ids but survive decode(skip_special_tokens=True).
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
           "<|image_pad|>", "<|video_pad|>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
# A Qwen-style chat template, so that tokenizer.apply_chat_template works on the folder too.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# The base model's pretraining (bench/pretrain_base.py): prompts for describing videos, and words for the generic
# list skills (matching a list to one of four lettered lists, reversing a list) that have nothing to do with walks.
NARRATE = "Narrate the walk in this video."
LOOK = "What do you see in front of you?"
TURN = "Which way do you turn?"
WORDS = ("apple", "river", "seven", "cloud", "tiger", "piano", "candle", "forest", "silver", "rocket", "garden",
         "violin", "dragon", "pepper", "island", "marble", "copper", "winter", "falcon", "meadow", "ocean", "pencil",
         "thunder", "cherry")
MATCH = "Which option is the list: {}? Options: {}"
REVERSE = "Reverse the list: {}."
LOOKUP = "Options: {}. Which option has each word?"


def corpus(n_videos=100, seed=0):
    """Training text for the tokenizer: the world's questions and answers, the authors' fixture rows, the chat
    scaffolding, the base model's pretraining prompts and words. Text only: no video is rendered."""
    from st_r1 import world
    texts = [NARRATE, LOOK, TURN, "I see the", "I turn left.", "I turn right.", "which is option"]
    texts += [", ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    for i in range(n_videos):
        w = world.world_for(seed, "train", i)
        for r in world.make_rows(w, "", seed, "train", i):
            texts += [r["problem"], r["solution"]]
    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                            "ego_st_r1_mcq_126.jsonl")
    if os.path.isfile(fixtures):
        with open(fixtures) as f:
            for line in f:
                r = json.loads(line)
                texts += [r["problem"], r["solution"]]
    try:
        from st_r1.chat import SYSTEM_PROMPT
        texts.append(SYSTEM_PROMPT)
    except ImportError:
        pass
    texts += ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    return texts


def train_tokenizer(texts, vocab_size=1536):
    """Byte-level BPE (every byte is a token, so any text round-trips) with the special tokens first (ids 0..)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    return tok


def write_tokenizer(out_dir, vocab_size=1536, n_videos=100, seed=0):
    """Train and save a PreTrainedTokenizerFast folder (pad <|endoftext|>, eos <|im_end|>); returns it."""
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(corpus(n_videos, seed), vocab_size),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768,
                                  additional_special_tokens=SPECIAL[1:2] + SPECIAL[3:], chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(out_dir)
    return tok


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def mrope_section(head_dim, family="qwen2_5_vl"):
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen2.5-VL's 16:24:24 proportion, or
    Qwen3-VL's 24:20:20 (its height and width frequencies interleaved, so each gets at most a third)."""
    half = head_dim // 2
    if family == "qwen3_vl":
        h = half * 5 // 16
        return [half - 2 * h, h, h]
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def tiny_config(tok, hidden=128, layers=2, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2, vision_heads=4,
                family="qwen2_5_vl"):
    """config.json dict in the family's released-checkpoint layout (Qwen2/2.5-VL flat, Qwen3-VL nested);
    transformers 5 reads both."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    vocab = -(-len(tok) // 16) * 16  # room for every token, rounded like Qwen pads its vocabulary
    if family == "qwen3_vl":
        return qwen3_config(ids, vocab, hidden, layers, heads, kv_heads, vision_hidden, vision_depth, vision_heads)
    if family == "qwen2_vl":
        return qwen2_config(ids, vocab, hidden, layers, heads, kv_heads, vision_hidden, vision_depth, vision_heads)
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "initializer_range": 0.02,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": mrope_section(hidden // heads)},
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": layers, "attention_dropout": 0.0,
        "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
        **token_ids(ids),
        "vision_config": {
            "depth": vision_depth, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
            "num_heads": vision_heads, "hidden_act": "silu", "in_chans": 3, "out_hidden_size": hidden,
            "patch_size": 14, "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 112, "fullatt_block_indexes": [vision_depth - 1], "tokens_per_second": 2},
    }


def token_ids(ids):
    """The special token ids a Qwen2/2.5-VL config names (Qwen3-VL splits them between its nested configs)."""
    return {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"]}


def qwen2_config(ids, vocab, hidden, layers, heads, kv_heads, vision_hidden, vision_depth, vision_heads):
    """Qwen2-VL: Qwen2.5-VL's decoder (contiguous M-RoPE sections), a LayerNorm / quick-GELU tower without windows."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": mrope_section(hidden // heads)},
        "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
        **token_ids(ids),
        "vision_config": {
            "depth": vision_depth, "embed_dim": vision_hidden, "hidden_size": hidden, "mlp_ratio": 2,
            "num_heads": vision_heads, "hidden_act": "quick_gelu", "in_chans": 3, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2},
    }


def qwen3_config(ids, vocab, hidden, layers, heads, kv_heads, vision_hidden, vision_depth, vision_heads):
    """Qwen3-VL, nested as its releases are: Qwen3 decoder (q/k norms, no biases, interleaved M-RoPE), a tower of
    16-px patches with learned positions and one DeepStack level (vision block 0 -> decoder layer 0)."""
    head_dim = hidden // heads
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "tie_word_embeddings": True, "dtype": "float32",
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": head_dim, "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
            "attention_bias": False, "tie_word_embeddings": True, "dtype": "float32", "use_cache": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True,
                                "mrope_section": mrope_section(head_dim, "qwen3_vl")},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]},
        "vision_config": {
            "model_type": "qwen3_vl_vision", "depth": vision_depth, "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden, "num_heads": vision_heads, "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3, "out_hidden_size": hidden, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "num_position_embeddings": 256, "deepstack_visual_indexes": [0]},
    }


def write_tiny_model(out_dir, seed=0, hidden=128, layers=2, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2,
                     vision_heads=4, vocab_size=1536, weights=True, family="qwen2_5_vl"):
    """Write a tiny random Qwen2.5-VL (or `family`) folder: tokenizer, config.json, generation_config.json and
    (weights=True) model.safetensors from st_r1.model.VideoLM seeded with `seed`. Returns out_dir."""
    import torch
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    os.makedirs(out_dir, exist_ok=True)
    tok = write_tokenizer(out_dir, vocab_size, seed=seed)
    cfg = tiny_config(tok, hidden, layers, heads, kv_heads, vision_hidden, vision_depth, vision_heads, family)
    ids = cfg.get("text_config") or cfg
    gen = {"bos_token_id": ids["bos_token_id"], "pad_token_id": ids["pad_token_id"],
           "eos_token_id": [ids["eos_token_id"], ids["pad_token_id"]]}
    for name, obj in (("config.json", cfg), ("generation_config.json", gen)):
        with open(os.path.join(out_dir, name + ".tmp"), "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    if weights:
        from st_r1.model import VideoLM
        torch.manual_seed(seed)
        VideoLM.from_config(cfg).save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write a tiny random Qwen-VL (tokenizer, config, weights)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="the model_type written")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    print(write_tiny_model(a.out, a.seed, a.hidden, a.layers, family=a.family))
