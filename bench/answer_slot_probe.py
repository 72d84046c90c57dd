"""Does the answer copy the chain? The letter distribution at the <answer> slot, teacher-forced on fixed replies.

    python bench/answer_slot_probe.py --replies runs/main/seed0/sft_weak.predictions.jsonl \
        --bench runs/main/world/test.jsonl --models MODEL_DIR[,MODEL_DIR...]

For each multiple-choice reply (up to --limit) whose chain of thought concludes a letter ("... correct answer is X",
rewards.concluded_letter), every model reads the same prompt and the same reply up to and including "<answer>",
and the probe reports the mean probability of the chain's letter there, how often it is the argmax, the mean
probability of the gold letter and the entropy at that slot. Fixed replies separate the copy (this slot) from the
chain (the tokens before it): a model's greedy accuracy moves with both.
"""
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from st_r1 import answers, cli, data, rewards  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402
from st_r1.predictions import read_predictions  # noqa: E402


@dataclass
class Probe:
    """p(letter) at the answer slot of fixed replies, for each model."""
    replies: str = ""            # predictions JSONL ({"index", "prediction"}) on --bench
    bench: str = ""              # the bench JSONL the replies answer; videos resolve from its folder
    models: str = ""             # model folders, comma-separated
    limit: int = 120


def probe(model_dir, rows, replies, video_root, limit):
    tok = data.load_tokenizer(model_dir)
    model = VideoLM.from_pretrained(model_dir, dtype=torch.float32, device="cpu").eval()
    enc = data.PromptEncoder(tok, video_root=video_root, merge_size=model.spatial_merge_size, family=model.model_type)
    letter_ids = [tok.encode(x, add_special_tokens=False) for x in "ABCD"]
    if any(len(i) != 1 for i in letter_ids):
        raise SystemExit(f"{model_dir}: the letters A-D are not one token each: this probe reads one slot")
    letter_ids = torch.tensor([i[0] for i in letter_ids])
    p_chain = p_gold = argmax_chain = entropy = n = 0.0
    for index, text in sorted(replies.items()):
        row = rows[index]
        said = rewards.concluded_letter(text)
        if answers.row_gold(row) is None or not said or text.count("<answer>") != 1:
            continue
        ex = enc.encode(row)
        ids = ex["input_ids"] + tok.encode(text[:text.index("<answer>") + len("<answer>")], add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           pixel_values_videos=ex["pixel_values_videos"], video_grid_thw=ex["video_grid_thw"].view(1, 3),
                           second_per_grid_ts=torch.tensor([ex["second_per_grid_ts"]]), logits_to_keep=1)
        logp = torch.log_softmax(logits[0, -1].float(), -1)
        q = logp[letter_ids].exp()
        p_chain += q["ABCD".index(said)].item()
        p_gold += q["ABCD".index(answers.row_gold(row))].item()
        argmax_chain += int(q.argmax().item() == "ABCD".index(said))
        entropy += -(logp.exp() * logp).sum().item()
        n += 1
        if n >= limit:
            break
    if not n:
        raise SystemExit("no multiple-choice reply with a concluded letter and one <answer> tag to probe")
    return dict(n=int(n), p_chain=p_chain / n, argmax_chain=argmax_chain / n, p_gold=p_gold / n, entropy=entropy / n)


def main(opt):
    torch.set_num_threads(1)
    rows = data.load_rows(opt.bench)
    replies = read_predictions(opt.replies, len(rows))  # the evaluator's reader: a bad line names path:line
    print(f"| model | replies | p(chain's letter) | argmax = chain's letter | p(gold letter) | entropy (nats) |\n"
          f"|---|---|---|---|---|---|")
    for m in opt.models.split(","):
        r = probe(m, rows, replies, os.path.dirname(os.path.abspath(opt.bench)), opt.limit)
        print(f"| {m} | {r['n']} | {r['p_chain']:.3f} | {100 * r['argmax_chain']:.1f}% | {r['p_gold']:.3f} | "
              f"{r['entropy']:.2f} |", flush=True)


if __name__ == "__main__":
    cli.run(main, Probe)
