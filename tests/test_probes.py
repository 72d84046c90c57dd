"""bench/probes/oracle.py --check: the verdict lines of chain-of-thought replies read step by step."""
import json
import re
import sys

from conftest import ROOT

sys.path.insert(0, ROOT + "/bench/probes")
import oracle  # noqa: E402

from st_r1 import world  # noqa: E402


def test_check_reads_the_verdict_lines(tmp_path):
    rows = [r for i in range(3)
            for r in world.make_rows(world.world_for(0, "test", i, frames=16, balanced=True), "v.mp4", 0, "test", i)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = [i for i, r in enumerate(rows) if r.get("options")]
    replies = {i: rows[i]["solution"] for i in mc}  # the reference chains: every step right

    def check():
        pred = tmp_path / "p.jsonl"
        pred.write_text("".join(json.dumps({"index": i, "prediction": t}) + "\n" for i, t in replies.items()))
        return oracle.check(str(tmp_path / "test.jsonl"), str(pred))
    n = len(mc)
    c = check()
    assert c["mc"] == c["four lines"] == c["recall right"] == c["options copied"] == c["marks agree"] == n
    assert c["verdicts agree"] == c["one yes"] == c["letter = yes line"] == c["right"] == n
    # reply 1 answers another letter than its "yes" line
    b = mc[1]
    other = next(L for L in "ABCD" if L != rows[b]["original_answer"])
    replies[b] = replies[b].replace(f"<answer>{rows[b]['original_answer']}", f"<answer>{other}")
    # reply 0's first mismatching pair copied as the recalled word with an "ok": a wrong copy
    a = mc[0]
    x, y = re.search(r"(\w+) (\w+) x", replies[a]).groups()
    replies[a] = re.sub(r"(\w+) (\w+) x", f"{y} {y} ok", replies[a], count=1)
    c = check()
    assert c["options copied"] == n - 1 and c["marks agree"] == n and c["letter = yes line"] == n - 1
    assert c["verdicts agree"] == n - 1 and c["right"] == n - 1  # the yes/no of the changed line was left as it was
