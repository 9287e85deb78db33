"""The one training routine vs a plain transformers.Trainer full fine-tune, same model, facts,
epochs, batch size, learning rate, schedule, clipping and precision (fp32).

Prints facts x epochs per second for both, the ratio, both final accuracies, the routine's useful
FLOP rate (6 x non-embedding parameters x non-padding tokens, plus the LM head at answer tokens
only) as a share of this machine's fp32 matmul peak (measured here), over the whole run and after
its first epoch, and peak memory; then one line of name=value pairs. Uses results/model (run `make run` first) or converts the embedded model.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workflow_scripts  # noqa: E402,F401  (before torch: its allocator settings, see the package)
import torch  # noqa: E402
from workflow_scripts.facts.schema import flat_facts  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.metrics import accuracy  # noqa: E402
from workflow_scripts.metrics.exact_match import encode_pair  # noqa: E402
from workflow_scripts.models.loading import converted_model_dir, load_model  # noqa: E402
from workflow_scripts.training.train import TrainConfig, train  # noqa: E402

N_FACTS, EPOCHS, BATCH, LR = 96, 2, 16, 1e-4


def matmul_peak_flops(n: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """The best of several timed runs of an fp32 n x n matmul (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def trainer_run(model, tok, prompts, targets) -> float:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = []
    for p, t in zip(prompts, targets):
        pair = encode_pair(tok, p, t)
        labels = [-100] * pair.target_start + pair.ids[pair.target_start : pair.target_end]
        rows.append({"input_ids": pair.ids, "attention_mask": [1] * len(pair.ids), "labels": labels})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(2)
    model_dir = converted_model_dir()
    flat = flat_facts(starter_records()).sample(N_FACTS, random_state=0)
    prompts, targets = flat.prompt.tolist(), flat.target_true.tolist()

    peak = matmul_peak_flops()
    model, tok = load_model(model_dir, dtype="float32")
    pairs = [encode_pair(tok, p, t) for p, t in zip(prompts, targets)]
    tokens = sum(len(p.ids) for p in pairs)
    answer_tokens = sum(p.n_target for p in pairs)
    embed = model.get_input_embeddings().weight
    non_embedding = sum(p.numel() for p in model.parameters()) - embed.numel()
    head = embed.shape[0] * embed.shape[1]  # tied LM head: vocabulary x hidden
    useful = EPOCHS * (6 * non_embedding * tokens + 6 * head * answer_tokens)

    def run_trainer() -> tuple[float, float]:
        model, tok = load_model(model_dir, dtype="float32")
        seconds = trainer_run(model, tok, prompts, targets)
        model.eval()
        return seconds, accuracy(model, tok, prompts, targets)

    # The plain Trainer runs first, with the C library's default allocator (as a user would run it).
    trainer_s, trainer_acc = run_trainer()
    del model
    model, tok = load_model(model_dir, dtype="float32")
    cfg = TrainConfig(lr=LR, epochs=EPOCHS, batch_size=BATCH, schedule="linear", max_grad_norm=1.0)
    start = time.perf_counter()
    history = train(model, tok, prompts, targets, cfg)  # also keeps freed memory in the heap from here on
    ours_s = time.perf_counter() - start
    # After the first epoch (which pays for first-touch memory: gradients, optimiser state, activations)
    warm_s = sum(h["seconds"] for h in history[1:]) / max(1, len(history) - 1)
    ours_rss = peak_rss_gb()
    ours_acc = accuracy(model, tok, prompts, targets)
    del model
    # The Trainer again, now with the routine's allocator setting: what the routine itself adds.
    tuned_s, tuned_acc = run_trainer()

    ours_rate, trainer_rate, tuned_rate = (N_FACTS * EPOCHS / s for s in (ours_s, trainer_s, tuned_s))
    share = useful / ours_s / peak
    warm_share = useful / EPOCHS / warm_s / peak
    print(f"{N_FACTS} facts x {EPOCHS} epochs, batch {BATCH}, lr {LR}, fp32, linear schedule, clipping 1.0")
    print(f"routine: {ours_s:.1f} s = {ours_rate:.2f} facts*epochs/s, final accuracy {ours_acc:.3f}")
    print(f"Trainer: {trainer_s:.1f} s = {trainer_rate:.2f} facts*epochs/s, final accuracy {trainer_acc:.3f}")
    print(f"Trainer with the routine's allocator setting: {tuned_s:.1f} s = {tuned_rate:.2f} facts*epochs/s, "
          f"final accuracy {tuned_acc:.3f}")
    print(f"speed ratio: {ours_rate / trainer_rate:.2f}x the plain Trainer, {ours_rate / tuned_rate:.2f}x the "
          f"Trainer with the same allocator setting")
    print(f"fp32 matmul peak here: {peak / 1e9:.1f} GFLOP/s; routine's useful FLOP rate {useful / ours_s / 1e9:.1f} "
          f"GFLOP/s = {100 * share:.1f}% of peak")
    print(f"routine after its first epoch: {warm_s:.1f} s per epoch, useful FLOP rate "
          f"{useful / EPOCHS / warm_s / 1e9:.1f} GFLOP/s = {100 * warm_share:.1f}% of peak")
    print(f"peak memory (RSS) after the routine (the Trainer ran before it): {ours_rss:.2f} GB")
    print(f"routine_facts_epochs_per_s={ours_rate:.2f} trainer_facts_epochs_per_s={trainer_rate:.2f} "
          f"speedup={ours_rate / trainer_rate:.2f} speedup_same_allocator={ours_rate / tuned_rate:.2f} routine_acc={ours_acc:.3f} trainer_acc={trainer_acc:.3f} "
          f"useful_gflops={useful / ours_s / 1e9:.1f} peak_gflops={peak / 1e9:.1f} share_of_peak={share:.3f} "
          f"share_of_peak_after_first_epoch={warm_share:.3f} "
          f"peak_rss_gb={ours_rss:.2f}")


if __name__ == "__main__":
    main()
