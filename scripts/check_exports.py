"""Loads petnas exports in PyTorch and compares logits with petnas's own on real dev examples.

    python scripts/check_exports.py --predictions PRED.jsonl --merged DIR [--peft DIR --base DIR]

PRED.jsonl comes from `petnas-train predict --run RUN` (texts and petnas logits). The merged
folder is loaded with AutoModelForSequenceClassification; the adapter with PeftModel on top of
the base model. Prints one JSON line per export: max |Δlogit| and argmax agreement.
"""
import argparse, json, sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def logits_of(model, tok, rows, max_len):
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            chunk = rows[i:i + 32]
            a = [r["text_a"] for r in chunk]
            b = [r["text_b"] for r in chunk] if chunk[0]["text_b"] is not None else None
            enc = tok(a, b, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            out.append(model(**enc).logits)
    return torch.cat(out)


def compare(name, ours, theirs):
    d = (ours - theirs).abs().max().item()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item() if ours.shape[1] > 1 else None
    rep = {"export": name, "examples": ours.shape[0], "max_abs_logit_diff": d, "argmax_agreement": agree}
    print(json.dumps(rep))
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--merged")
    ap.add_argument("--peft")
    ap.add_argument("--base", help="base model folder for --peft")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.predictions) if l.strip()]
    ours = torch.tensor([r["logits"] for r in rows])
    worst = 0.0
    if a.merged:
        tok = AutoTokenizer.from_pretrained(a.merged)
        m = AutoModelForSequenceClassification.from_pretrained(a.merged)
        worst = max(worst, compare("merged", ours, logits_of(m, tok, rows, a.max_len)))
    if a.peft:
        from peft import PeftModel
        tok = AutoTokenizer.from_pretrained(a.base)
        base = AutoModelForSequenceClassification.from_pretrained(a.base, num_labels=ours.shape[1])
        m = PeftModel.from_pretrained(base, a.peft)
        worst = max(worst, compare("peft", ours, logits_of(m, tok, rows, a.max_len)))
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
