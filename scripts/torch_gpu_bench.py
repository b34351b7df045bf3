"""PyTorch + PEFT side of `petnas-train bench --device cuda:0`: one PET training step on a GPU.

The step `petnas-train bench` times (and `../shared/reference/torch_pet_bench.py` times on the
CPU): a BERT/RoBERTa encoder with a sequence-classification head, every bias trainable, rank-8
LoRA (alpha 8) on attention query/key and both FFN dense modules, Adam, a batch of random
full-length tokens. Timed with torch.cuda.synchronize() around each step; the median of the
timed steps is reported.

    python3 scripts/torch_gpu_bench.py --model DIR [--device cuda:0] [--batch 16] [--seq 128]
        [--steps 20] [--warmup 5] [--autocast bf16]

--autocast bf16: forward and backward under torch.autocast("cuda", dtype=torch.bfloat16), what a
PyTorch user turns on for speed. Prints one JSON line.
"""
import argparse, json, statistics, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    cfg = LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.0, bias="all",
                     target_modules=r".*layer\.\d+\.(attention\.self\.(query|key)|intermediate\.dense|output\.dense)",
                     modules_to_save=["classifier"])
    model = get_peft_model(model, cfg).to(dev)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    ids = torch.randint(1000, model.config.vocab_size, (a.batch, a.seq), device=dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (a.batch,), device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    cuda = dev.type == "cuda"
    print(json.dumps({"impl": "torch+peft", "torch": torch.__version__,
                      "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
                      "autocast": a.autocast, "batch": a.batch, "seq": a.seq, "trainable_params": trainable,
                      "ms_per_step": round(ms, 3), "examples_per_s": round(a.batch * 1e3 / ms, 2),
                      "peak_mem_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if cuda else None}))


if __name__ == "__main__":
    main()
