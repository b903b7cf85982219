"""labkit's recipe for the embedded model: a ~16M-parameter Llama trained on the Python standard library.

    python -m labkit train-tiny --steps 800 --out data/models/stdlib-llama-16m

Seeded and deterministic in what it reads (files split by path hash, windows drawn by a seeded generator).
Trains in bf16 autocast where the CPU has bf16 dot products (AVX512-BF16 or AMX), fp32 elsewhere. Writes a
Hugging Face folder (config, safetensors, tokenizer, generation config) plus a model card, the committed
evaluation text and the calibration text. Users and CI never retrain: the result is committed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from labkit import DATA
from labkit.core.corpus import EOT, join_documents, stdlib_files
from labkit.core.hardware import cpu_model
from labkit.core.progress import tqdm


@dataclass
class TinyRecipe:
    name: str = "stdlib-llama-16m"
    vocab_size: int = 8192
    hidden_size: int = 384
    intermediate_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seq_len: int = 512
    batch_size: int = 16
    steps: int = 800
    lr: float = 1.5e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.1
    seed: int = 1234
    eval_chars: int = 300_000
    calib_chars: int = 120_000
    tokenizer_train_chars: int = 12_000_000


SAMPLE_PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    for name in argv:\n        if "


def sample_continuation(model, tok, prompt: str = SAMPLE_PROMPT, new_tokens: int = 48) -> str:
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(ids[0], skip_special_tokens=False)


def _bf16_ok() -> bool:
    from labkit.core.hardware import cpu_features

    f = cpu_features()
    return bool(f.get("avx512_bf16") or f.get("amx_bf16"))


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    chunks = (text[i : i + 100_000] for i in range(0, len(text), 100_000))
    bpe.train_from_iterator(chunks, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT, model_max_length=1024)


def _lr_at(step: int, r: TinyRecipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    frac = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (r.min_lr_frac + (1 - r.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def build_model(r: TinyRecipe, eot_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=r.vocab_size, hidden_size=r.hidden_size, intermediate_size=r.intermediate_size,
        num_hidden_layers=r.num_hidden_layers, num_attention_heads=r.num_attention_heads,
        num_key_value_heads=r.num_key_value_heads, max_position_embeddings=r.max_position_embeddings,
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(r.seed)
    return LlamaForCausalLM(cfg)


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity of the add-one-smoothed unigram distribution of the training tokens: the floor a model
    that ignores context would reach."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(torch.exp(-logp[eval_ids].mean()))


def _corpus(r: TinyRecipe):
    """The split corpus, its tokenizer and token ids: (tok, train ids, eval ids, eval text, calibration text)."""
    train_docs = stdlib_files("train")
    held_docs = stdlib_files("heldout")
    eval_text = join_documents(held_docs, r.eval_chars)
    calib_text = join_documents(train_docs[::25], r.calib_chars)
    train_text = join_documents(train_docs)
    print(f"corpus: {len(train_docs)} training files ({len(train_text)/1e6:.1f} M chars), "
          f"{len(held_docs)} held-out files; eval text {len(eval_text)/1e3:.0f} K chars")
    tok = train_tokenizer(train_text[: r.tokenizer_train_chars], r.vocab_size)
    ids = torch.tensor(tok(train_text, verbose=False)["input_ids"], dtype=torch.long)
    eval_ids = torch.tensor(tok(eval_text, verbose=False)["input_ids"], dtype=torch.long)
    print(f"tokens: {ids.numel()/1e6:.2f} M training, {eval_ids.numel()/1e3:.0f} K held-out "
          f"({len(train_text)/ids.numel():.2f} chars/token)")
    return tok, ids, eval_ids, eval_text, calib_text


def train_steps(model, ids: torch.Tensor, r: TinyRecipe, progress: bool = True, desc: str | None = None) -> list[float]:
    """`r.steps` AdamW steps of next-token prediction on seeded random windows of `ids` (the recipe's batch,
    window, cosine schedule, weight decay on matrices, grad clip 1.0; bf16 autocast where the CPU has bf16
    dot products). Used to train the embedded model, and by later lessons to fine-tune one (pruning's
    recovery). Returns the loss of every step; leaves the model in eval mode."""
    use_bf16 = _bf16_ok()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(r.seed)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(r.steps), desc=desc or f"train {r.name}", mininterval=5, disable=not progress)
    for step in bar:
        starts = torch.randint(0, ids.numel() - r.seq_len - 1, (r.batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + r.seq_len + 1] for s in starts.tolist()])
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, r)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


def train(r: TinyRecipe, out: Path, threads: int | None = None) -> dict:
    """Train the embedded model with recipe `r` and write it, its card and the evaluation texts to `out`."""
    from labkit.core.quality import perplexity

    if threads:
        torch.set_num_threads(threads)
    t_start = time.time()
    tok, ids, eval_ids, eval_text, calib_text = _corpus(r)
    model = build_model(r, tok.convert_tokens_to_ids(EOT))
    t_train = time.time()
    losses = train_steps(model, ids, r)
    train_s = time.time() - t_train

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 64
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (DATA / "eval").mkdir(parents=True, exist_ok=True)
    (DATA / "eval" / "heldout.txt").write_text(eval_text, encoding="utf-8")
    (DATA / "eval" / "calibration.txt").write_text(calib_text, encoding="utf-8")

    ppl = perplexity(model, tok, eval_text)
    info = {
        "recipe": asdict(r), "parameters": sum(p.numel() for p in model.parameters()),
        "training_tokens": r.steps * r.batch_size * r.seq_len,
        "corpus_tokens": int(ids.numel()), "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t_start, 1), "bf16_autocast": _bf16_ok(),
        "final_loss_avg50": sum(losses[-50:]) / len(losses[-50:]), "heldout_perplexity": ppl["perplexity"],
        "heldout_tokens_scored": ppl["tokens"], "unigram_perplexity": unigram_perplexity(ids, eval_ids, r.vocab_size),
        "sample_prompt": SAMPLE_PROMPT, "sample": sample_continuation(model, tok, SAMPLE_PROMPT),
        "python": sys.version.split()[0], "torch": torch.__version__, "machine": cpu_model(),
        "threads": torch.get_num_threads(),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(model_card(info))
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=2))
    return info


def model_card(info: dict) -> str:
    r = info["recipe"]
    return f"""# {r['name']}

A small Llama-architecture causal language model trained by labkit's own recipe
(`python -m labkit train-tiny`) on the Python standard library's source code, so that the course can
measure *quality* (not just speed) offline. It is not a useful assistant; it writes Python-looking code.

| | |
|---|---|
| architecture | `LlamaForCausalLM`: RoPE, RMSNorm, SwiGLU, GQA ({r['num_attention_heads']} query heads, {r['num_key_value_heads']} KV heads) |
| layers / hidden / intermediate | {r['num_hidden_layers']} / {r['hidden_size']} / {r['intermediate_size']} |
| parameters | {info['parameters']:,} |
| tokenizer | byte-level BPE, {r['vocab_size']} tokens, trained with `tokenizers` on the training side |
| corpus | CPython {info['python']} standard library `.py` files; split by a hash of each file's path (1 in 40 held out) |
| training | {r['steps']} steps x {r['batch_size']} x {r['seq_len']} tokens = {info['training_tokens']:,} tokens, AdamW, cosine LR peak {r['lr']}, seed {r['seed']} |
| precision | {'bf16 autocast' if info['bf16_autocast'] else 'fp32'}; weights stored in fp32 (safetensors) |
| training time | {info['train_seconds'] / 60:.1f} min on {info['threads']} CPU threads ({info['machine']}), torch {info['torch']}{info.get('time_note', '')} |
| held-out perplexity | **{info['heldout_perplexity']:.3f}** on `data/eval/heldout.txt` ({info['heldout_tokens_scored']:,} tokens, strided 512-token windows) |
| unigram baseline | {info['unigram_perplexity']:.1f} (a model that ignores context) |

Sample (greedy) continuation of `{info['sample_prompt']!r}`:

```python
{info['sample']}
```

Licence: the training text and `data/eval/*.txt` are excerpts of CPython's standard library, © Python
Software Foundation, under the PSF License Agreement (see `data/eval/LICENSE-PSF.md`).
"""
