"""Prompts in Qwen-VL's chat format, with the video placeholder expanded to one token per merged patch
(and, for Qwen3-VL, one block per temporal patch after its timestamp)."""

SYSTEM_PROMPT = "You are a helpful assistant."
# R1-style instruction appended to every question: the model must think, then answer in tags (paper Sec. 4).
THINK_INSTRUCTION = (" Output the thinking process in <think> </think> and the final answer (the option letter, or the"
                     " route description) in <answer> </answer> tags.")
END_OF_TURN = "<|im_end|>"


def video_text(num_video_tokens, timestamps=None):
    """One video's placeholder. Qwen2/2.5-VL: one block of tokens. Qwen3-VL (timestamps: seconds of each temporal
    patch): a block per temporal patch, each after its time. The blocks replace the template's
    <|vision_start|><|video_pad|><|vision_end|>, with no outer pair, as in Qwen's release (transformers 4.57, the
    layout the checkpoints were trained on) and transformers >= 5.25; transformers 5.0-5.24 kept the outer pair."""
    if timestamps is None:
        return "<|vision_start|>" + "<|video_pad|>" * num_video_tokens + "<|vision_end|>"
    per_patch = "<|video_pad|>" * (num_video_tokens // len(timestamps))
    return "".join(f"<{t:.1f} seconds><|vision_start|>{per_patch}<|vision_end|>" for t in timestamps)


def prompt_text(question, num_video_tokens=0, system=SYSTEM_PROMPT, instruction=THINK_INSTRUCTION, timestamps=None):
    """The chat string up to the assistant's turn. The video comes first in the user turn, as in Qwen's template."""
    video = video_text(num_video_tokens, timestamps) if num_video_tokens else ""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{video}{question}{instruction}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def num_video_tokens(video_grid_thw, merge_size=2):
    """One LM token per merge_size x merge_size block of patches (the patch merger), over all temporal groups."""
    t, h, w = (int(x) for x in video_grid_thw.reshape(-1)[:3])
    return t * h * w // (merge_size * merge_size)


def prompt_ids(tokenizer, question, video_grid_thw=None, merge_size=2, **kw):
    n = num_video_tokens(video_grid_thw, merge_size) if video_grid_thw is not None else 0
    return tokenizer.encode(prompt_text(question, n, **kw), add_special_tokens=False)


def answer_ids(tokenizer, solution):
    """The assistant's reply as trained in SFT: the solution, then the end-of-turn token the sampler stops at."""
    return tokenizer.encode(solution + END_OF_TURN, add_special_tokens=False)


def end_of_turn_ids(tokenizer):
    ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None and i >= 0)
