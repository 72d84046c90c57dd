"""Does a CoT SFT step depend on its micro-batch? One global batch of 16 rows from a main job's world: each row's
summed answer loss alone and left-padded among 8 rows, and the step's gradient accumulated at micro-batch 8, 2 and 1
(the same normaliser, sft_loss). Equal up to float rounding means micro-batch changes speed only; any larger gap
would be a padding bug.

    python bench/probes/micro_batch.py --job runs/main [--model models/tiny-base]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from st_r1 import data  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402
from st_r1.training import batch_rows, sft_loss  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="runs/main")
    ap.add_argument("--model", default="models/tiny-base")
    a = ap.parse_args()
    world = os.path.join(a.job, "world")
    tok = data.load_tokenizer(a.model)
    model = VideoLM.from_pretrained(a.model, dtype=torch.float32)
    rows = data.load_rows(os.path.join(world, "train.jsonl"), need=("solution",))
    enc = data.PromptEncoder(tok, world, 8, 56 * 56, 128 * 28 * 28, model.spatial_merge_size, family=model.model_type)
    ex = [e for _, e in data.encode_rows(enc, batch_rows(rows, 3, 16, 0), "encode_sft", log=print)[0]]
    n = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in ex)

    def row_losses(exs):  # each row's summed answer cross-entropy, the rows left-padded together
        b = data.collate_prompts(exs, tok.pad_token_id)
        labels = b.pop("labels")
        with torch.no_grad():
            logits = model(**b).float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                               reduction="none")
        return ce.sum(1)

    alone = torch.cat([row_losses([e]) for e in ex[:8]])
    together = row_losses(ex[:8])
    print(f"rows of {sorted(len(e['input_ids']) for e in ex[:8])} tokens: summed loss alone vs among 8, "
          f"max |diff| {(alone - together).abs().max():.2e} of max {alone.max():.1f}")

    def grad(micro):
        model.zero_grad()
        for k in range(0, len(ex), micro):
            sft_loss(model, data.collate_prompts(ex[k:k + micro], tok.pad_token_id), n).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    g8, g2, g1 = grad(8), grad(2), grad(1)
    print(f"gradient of 16 rows, |g| {g1.norm():.4f}: |g8 - g1| / |g1| {(g8 - g1).norm() / g1.norm():.1e}, "
          f"|g2 - g1| / |g1| {(g2 - g1).norm() / g1.norm():.1e}")


if __name__ == "__main__":
    main()
