"""Ego-ST rows: validated loading (file:line errors), the authors' fixture rows, batching, the SFT loss mask."""
import json
import os

import pytest
import torch

from conftest import FIXTURES
from st_r1 import chat, data

FIXTURE = os.path.join(FIXTURES, "ego_st_r1_mcq_126.jsonl")


def test_fixture_rows_load_as_they_are():
    rows = data.load_rows(FIXTURE)
    assert len(rows) == 126
    assert all(set(r) >= {"problem", "solution", "video", "original_question", "original_answer"} for r in rows)
    assert "task" not in rows[0]  # the authors' rows lack our extra keys; readers must not need them


@pytest.mark.parametrize("line,why", [
    ('{"problem": "q", "video": "v.mp4"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"problem": "q", "solution": "s"}', "'video'"),
    ('{"problem": "q", "video": "v.mp4"}', "'solution' or 'original_answer'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, why):
    p = tmp_path / "bad.jsonl"
    good = json.dumps({"problem": "q", "video": "v.mp4", "solution": "<answer>A</answer>"})
    p.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(data.DataError) as e:
        data.load_rows(str(p))
    assert f"{p}:3:" in str(e.value) and why in str(e.value)


def test_resolve_video():
    assert data.resolve_video({"video": "a/b.mp4"}, "/root") == "/root/a/b.mp4"
    assert data.resolve_video({"video": "/abs/b.mp4"}, "/root") == "/abs/b.mp4"


class CharTokenizer:
    """Stand-in tokenizer: one id per special token or character, enough to check masks and padding."""
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            for k, s in enumerate(self.specials):
                if text.startswith(s, i):
                    out.append(1000 + k)
                    i += len(s)
                    break
            else:
                out.append(ord(text[i]))
                i += 1
        return out


class FakeEncoder(data.PromptEncoder):
    def video(self, row):
        t = int(row.get("t", 2))
        return torch.randn(t * 16, 1176), torch.tensor([[t, 4, 4]]), 1.0, [2.0 * i + 0.5 for i in range(t)]


def test_sft_labels_cover_exactly_the_answer_tokens():
    tok = CharTokenizer()
    enc = FakeEncoder(tok)
    row = {"problem": "Which way?", "video": "v.mp4", "solution": "<think>t</think> <answer>B</answer>"}
    ex = enc.encode_sft(row)
    answer = chat.answer_ids(tok, row["solution"])
    n_prompt = len(ex["input_ids"]) - len(answer)
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == answer == ex["input_ids"][n_prompt:]
    assert answer[-1] == 1001  # ends with <|im_end|>, the token the sampler stops at
    assert ex["input_ids"].count(1004) == 2 * 4 * 4 // 4  # one video token per 2x2 merged patch


def test_collate_left_pads_and_stacks_videos():
    tok = CharTokenizer()
    enc = FakeEncoder(tok)
    a = enc.encode_sft({"problem": "short", "video": "a", "solution": "A", "t": 1})
    b = enc.encode_sft({"problem": "a longer question", "video": "b", "solution": "B", "t": 2})
    batch = data.collate_prompts([a, b], pad_token_id=0)
    assert batch["input_ids"].shape == (2, len(b["input_ids"]))
    pad = len(b["input_ids"]) - len(a["input_ids"])
    assert batch["attention_mask"][0, :pad].sum() == 0 and batch["attention_mask"][0, pad:].all()
    assert (batch["labels"][0, :pad] == -100).all()
    assert batch["pixel_values_videos"].shape[0] == 16 + 32
    assert batch["video_grid_thw"].tolist() == [[1, 4, 4], [2, 4, 4]]


def test_shuffle_temporal_permutes_groups_only():
    import random
    pv = torch.arange(4.0).repeat_interleave(3).view(12, 1)  # 4 temporal groups of 3 patches
    out = data.shuffle_temporal(pv, torch.tensor([[4, 1, 3]]), random.Random(0))
    groups = out.view(4, 3)
    assert not torch.equal(out, pv)
    assert all((g == g[0]).all() for g in groups) and sorted(groups[:, 0].tolist()) == [0, 1, 2, 3]
