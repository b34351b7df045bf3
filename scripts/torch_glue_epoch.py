"""PyTorch + PEFT side of the real-data speed comparison: train one GLUE pair task with the
petnas recipe and report wall time and dev score, so `scripts/epoch-vs-torch` can put it next to
`petnas-train train` on the same data.

Recipe (the same as petnas-train's): batch 16, max length 128 (longest-first truncation),
dynamic padding to the longest sequence of each batch, Adam (betas 0.9/0.999, eps 1e-8, no
weight decay), transformers' linear schedule with 6% warm-up (rounded), dropout on, the pooler
and classifier trained. Methods:

- bitfit: every bias of the encoder (embeddings LayerNorm included) + pooler + classifier;
- mam: bitfit + rank-8 LoRA (alpha 8: scale 1) on attention query, key and both FFN dense
  modules of every layer, the four modules petnas's `mam` space adapts (a regex, so
  attention.output.dense is not matched).

`--group-by-length N` sorts each window of N batches by length before batching (petnas's
`--bucket N`; transformers' `group_by_length` does the same with 50). 0 = plain shuffle.

    python scripts/torch_glue_epoch.py --model DIR --data GLUE_DIR [--task mrpc] [--method mam]
        [--lr 1e-3] [--epochs 1] [--threads 2] [--group-by-length 0] [--seed 0] [--max-grad-norm X]

Prints one JSON line: train seconds (excluding tokenisation and model load), examples/s, padded
fraction, final loss, dev accuracy/F1, and the trainable parameter count.
"""
import argparse, csv, json, math, random, sys, time

import numpy as np

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# (text_a column, text_b column, label column) of train/dev TSVs with a header row.
TASKS = {"mrpc": (3, 4, 0), "rte": (1, 2, 3), "qnli": (1, 2, 3), "sst2": (0, None, 1)}
LABELS = {"rte": {"entailment": 0, "not_entailment": 1}, "qnli": {"entailment": 0, "not_entailment": 1}}


def read_tsv(path, task):
    a, b, lab = TASKS[task]
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if i == 0:
                continue
            if len(row) <= max(c for c in (a, b, lab) if c is not None):
                sys.exit(f"{path}:{i + 1}: expected more columns, got {len(row)}")
            y = row[lab]
            y = LABELS[task][y] if task in LABELS else int(y)
            rows.append((row[a], row[b] if b is not None else None, y))
    return rows


def encode(tok, rows, max_len):
    a = [r[0] for r in rows]
    b = [r[1] for r in rows] if rows[0][1] is not None else None
    enc = tok(a, b, truncation=True, max_length=max_len)
    return [(ids, tt, r[2]) for ids, tt, r in zip(enc["input_ids"], enc["token_type_ids"], rows)]


def batches(data, batch, shuffle_rng, window):
    order = list(range(len(data)))
    shuffle_rng.shuffle(order)
    if window > 1:
        span = window * batch
        order = [i for s in range(0, len(order), span)
                 for i in sorted(order[s:s + span], key=lambda j: -len(data[j][0]))]
    chunks = [order[s:s + batch] for s in range(0, len(order), batch)]
    if window > 1:
        shuffle_rng.shuffle(chunks)
    return chunks


def collate(data, idx, pad_id):
    n = max(len(data[i][0]) for i in idx)
    ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    tt = torch.zeros((len(idx), n), dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    for r, i in enumerate(idx):
        x, t, _ = data[i]
        ids[r, :len(x)] = torch.tensor(x)
        tt[r, :len(t)] = torch.tensor(t)
        mask[r, :len(x)] = 1
    y = torch.tensor([data[i][2] for i in idx])
    return ids, tt, mask, y, n * len(idx), sum(len(data[i][0]) for i in idx)


class PetnasDropout:
    """petnas's dropout masks: keep where counter_uniform(seed, counter) >= p, scale 1/(1-p),
    counters consumed in row-major order call by call (petnas_core::rng, reimplemented in
    numpy's wrapping uint64 arithmetic)."""
    M1, M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    GOLDEN = np.uint64(0x9E3779B97F4A7C15)

    @classmethod
    def mix64(cls, z):
        z = (z ^ (z >> np.uint64(30))) * cls.M1
        z = (z ^ (z >> np.uint64(27))) * cls.M2
        return z ^ (z >> np.uint64(31))

    def __init__(self, seed):
        self.mixed = self.mix64(np.array([seed], dtype=np.uint64) ^ np.uint64(0x6A09E667F3BCC909))
        self.counter = 0

    def dropout(self, input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return input
        n = input.numel()
        c = np.arange(self.counter, self.counter + n, dtype=np.uint64)
        self.counter += n
        u = (self.mix64(self.mixed + c * self.GOLDEN) >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
        pf = np.float32(p)
        keep = np.where(u >= pf, np.float32(1.0) / (np.float32(1.0) - pf), np.float32(0.0)).astype(np.float32)
        return input * torch.from_numpy(keep.reshape(tuple(input.shape))).to(input.dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--task", default="mrpc", choices=sorted(TASKS))
    ap.add_argument("--method", default="mam", choices=["bitfit", "mam"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-by-length", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="stop early (for a smoke run)")
    ap.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    ap.add_argument("--max-grad-norm", type=float, default=None,
                    help="clip the global gradient norm (torch.nn.utils.clip_grad_norm_); default: no clipping")
    ap.add_argument("--replay", default=None, metavar="DIR",
                    help="replay a petnas training's draws from its PETNAS_TRACE folder: the batches "
                         "(steps.jsonl) in its order, and the head's initial values (init.safetensors)")
    ap.add_argument("--replay-dropout", action="store_true",
                    help="with --replay: draw petnas's dropout masks too (its counter-based generator, "
                         "reimplemented here; attention runs eagerly so that its dropout is a call)")
    ap.add_argument("--losses", default=None, metavar="FILE",
                    help="write the loss of every step there, one number a line")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="torch.autocast('cpu', bfloat16) around forward and backward (mixed precision)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    folder = {"mrpc": "MRPC", "rte": "RTE", "qnli": "QNLI", "sst2": "SST-2"}[a.task]
    tok = AutoTokenizer.from_pretrained(a.model)
    train = encode(tok, read_tsv(f"{a.data}/{folder}/train.tsv", a.task)[:a.max_train], a.max_len)
    dev = encode(tok, read_tsv(f"{a.data}/{folder}/dev.tsv", a.task), a.max_len)

    if a.replay_dropout and not a.replay:
        sys.exit("--replay-dropout needs --replay DIR")
    extra = {"attn_implementation": "eager"} if a.replay_dropout else {}
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2, **extra)
    if a.method == "mam":
        cfg = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, bias="all",
                         target_modules=r".*layer\.\d+\.(attention\.self\.(query|key)|intermediate\.dense|output\.dense)",
                         modules_to_save=["classifier", "pooler"])
        model = get_peft_model(model, cfg)
    else:
        for name, p in model.named_parameters():
            p.requires_grad = name.endswith(".bias") or "pooler" in name or "classifier" in name
    replay = None
    if a.replay:
        from safetensors.torch import load_file
        init = load_file(f"{a.replay}/init.safetensors")
        state = dict(model.named_parameters())
        copied = []
        for name, t in init.items():
            # petnas names the head as transformers does; its bias deltas (zero at the start) and
            # LoRA factors have names of their own and no counterpart here.
            if name in state and state[name].shape == t.shape:
                with torch.no_grad():
                    state[name].copy_(t)
                copied.append(name)
        if not any(n.startswith("classifier") for n in copied):
            sys.exit(f"{a.replay}/init.safetensors: no classifier tensor matched this model's names")
        print(f"replay: initial values of {', '.join(sorted(copied))} from {a.replay}", file=sys.stderr)
        replay_steps = [json.loads(l) for l in open(f"{a.replay}/steps.jsonl")]
        replay = [r["idx"] for r in replay_steps]
        if a.replay_dropout:
            draws = PetnasDropout(int(json.load(open(f"{a.replay}/dropout.json"))["seed"]))
            torch.nn.functional.dropout = draws.dropout
        top = max(max(b) for b in replay)
        if top >= len(train):
            sys.exit(f"{a.replay}/steps.jsonl: example index {top} but only {len(train)} training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    per_epoch = math.ceil(len(train) / a.batch)
    total = math.ceil(a.epochs * per_epoch)
    stop = total if a.max_steps is None else min(total, a.max_steps)
    warmup = round(0.06 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warmup) if s < warmup
                                              else max(0.0, (total - s) / max(1, total - warmup)))
    rng = random.Random(a.seed)
    model.train()
    step, seen, losses, padded, real = 0, 0, [], 0, 0
    t0 = time.perf_counter()
    if replay is not None:
        stop = min(stop, len(replay))
    while step < stop:
        epoch = replay if replay is not None else batches(train, a.batch, rng, a.group_by_length)
        for idx in epoch:
            if step >= stop:
                break
            ids, tt, mask, y, cells, toks = collate(train, idx, tok.pad_token_id)
            padded += cells - toks
            real += toks
            if a.replay_dropout:
                draws.counter = replay_steps[step]["dropout_counter"]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
                out = model(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=y)
            if a.replay_dropout and step + 1 < len(replay_steps) \
                    and draws.counter != replay_steps[step + 1]["dropout_counter"]:
                sys.exit(f"step {step}: this forward pass drew dropout counters up to {draws.counter}, "
                         f"petnas's up to {replay_steps[step + 1]['dropout_counter']}: the calls differ")
            out.loss.backward()
            if a.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            step += 1
            seen += len(idx)
    train_s = time.perf_counter() - t0
    if a.losses:
        with open(a.losses, "w") as f:
            f.writelines(f"{x!r}\n" for x in losses)

    model.eval()
    t1 = time.perf_counter()
    correct = tp = fp = fn = 0
    with torch.no_grad():
        for s in range(0, len(dev), 64):
            idx = list(range(s, min(s + 64, len(dev))))
            ids, tt, mask, y, _, _ = collate(dev, idx, tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
                pred = model(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits.argmax(-1)
            correct += int((pred == y).sum())
            tp += int(((pred == 1) & (y == 1)).sum())
            fp += int(((pred == 1) & (y == 0)).sum())
            fn += int(((pred == 0) & (y == 1)).sum())
    eval_s = time.perf_counter() - t1
    tail = losses[-max(1, len(losses) // 10):]
    print(json.dumps({
        "impl": "torch+peft", "torch": torch.__version__, "task": a.task, "method": a.method,
        "lr": a.lr, "epochs": a.epochs, "seed": a.seed, "max_grad_norm": a.max_grad_norm, "threads": a.threads, "group_by_length": a.group_by_length,
        "precision": "bf16" if a.autocast == "bf16" else "fp32",
        "trainable_params": trainable, "steps": step, "train_seconds": round(train_s, 2),
        "examples_per_s": round(seen / train_s, 2) if step else None,
        "padded_fraction": round(padded / max(1, padded + real), 4),
        "final_train_loss": round(sum(tail) / len(tail), 5), "eval_seconds": round(eval_s, 2),
        "dev_accuracy": round(correct / len(dev), 4),
        "dev_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4)}))


if __name__ == "__main__":
    main()
