"""The one training routine vs a plain transformers.Trainer full fine-tune, same model, facts,
epochs, batch size, learning rate, schedule, clipping and precision (fp32).

Every run is a fresh process (so no run inherits another's heap), and the contenders take turns
over ROUNDS rounds; each contender's best round counts. Prints facts x epochs per second for both,
the ratio, both final accuracies, the routine's useful FLOP rate (6 x non-embedding parameters x
non-padding tokens, plus the LM head at answer tokens only) as a share of this machine's fp32 matmul
peak (measured here), over the whole run and after its first epoch, and the routine's peak memory.
Also: the Trainer with the routine's allocator setting (what that setting alone gives), and, where
the CPU has native bf16 (AVX-512 BF16 or AMX), the routine with bf16 autocast, reported separately
with its accuracy. The ratio to the Trainer is printed for every round (contenders of a round run
back to back, so a round's ratio compares like with like) as well as for the best runs.

Targeted arms: the routine training 20 % of the tracked neurons (seeded random rows; embeddings,
head and norms frozen) as the ``neurons`` method does (trainable row deltas: gradients and optimiser
state for the chosen rows only), its speed against the full arm's, and the same arm through whole-
weight masks (what it cost before). Last, one line of name=value pairs. Uses results/model (run `make run` first) or
converts the embedded model.

    python benchmarks/training_speed.py            # the comparison
    python benchmarks/training_speed.py --run NAME # one contender, one JSON line (used by the above)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workflow_scripts  # noqa: E402,F401  (before torch: its allocator settings, see the package)
import torch  # noqa: E402
from workflow_scripts.facts.schema import flat_facts  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.evaluation import accuracy  # noqa: E402
from workflow_scripts.models.encoding import encode_pair  # noqa: E402
from workflow_scripts.models.loading import converted_model_dir, load_model  # noqa: E402
from workflow_scripts.training.train import TrainConfig, bf16_supported, train  # noqa: E402

N_FACTS, EPOCHS, BATCH, LR, ROUNDS = 96, 3, 16, 1e-4, 2
CONTENDERS = ("trainer", "routine", "trainer_same_allocator", "routine_neurons", "routine_neurons_masked",
              "routine_bf16")
TARGETED_FRACTION = 0.2


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


def facts() -> tuple[list[str], list[str]]:
    flat = flat_facts(starter_records()).sample(N_FACTS, random_state=0)
    return flat.prompt.tolist(), flat.target_true.tolist()


def trainer_train(model, tok, prompts, targets) -> None:
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
    trainer.train()


def run_one(name: str, model_dir: str) -> dict:
    """One contender in this process: seconds, seconds per epoch after the first (routine only),
    final accuracy on the training facts, peak RSS."""
    from workflow_scripts.runtime import keep_freed_memory

    torch.set_num_threads(2)
    prompts, targets = facts()
    model, tok = load_model(model_dir, dtype="float32")
    warm = float("nan")
    start = time.perf_counter()
    if name.startswith("trainer"):
        if name == "trainer_same_allocator":
            keep_freed_memory()
        trainer_train(model, tok, prompts, targets)  # the plain one keeps the C library's default allocator
    else:
        cfg = TrainConfig(lr=LR, epochs=EPOCHS, batch_size=BATCH, schedule="linear", max_grad_norm=1.0,
                          precision="bf16" if name == "routine_bf16" else "fp32")
        plugins = targeted_plugins(model, masked=name.endswith("_masked")) if "neurons" in name else []
        history = train(model, tok, prompts, targets, cfg, plugins)  # also keeps freed memory in the heap
        # after the first epoch, which pays for first-touch memory (gradients, optimiser state)
        warm = sum(h["seconds"] for h in history[1:]) / max(1, len(history) - 1)
    seconds = time.perf_counter() - start
    model.eval()
    return {"name": name, "seconds": seconds, "epoch_seconds_after_first": warm,
            "accuracy": accuracy(model, tok, prompts, targets),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def targeted_plugins(model, masked: bool) -> list:
    """The neurons method's plugins for TARGETED_FRACTION of the tracked neurons, drawn at random
    (seeded): row deltas, or (``masked``) masks on the whole weights."""
    from workflow_scripts.models.architectures import linear_modules
    from workflow_scripts.training.masks import parameter_masks, tracked_parameter_names
    from workflow_scripts.training.plugins import OnlyParameters, RowDeltas, UpdateMask

    g = torch.Generator().manual_seed(0)
    chosen = {m.name: torch.rand(m.out_features, generator=g) < TARGETED_FRACTION for m in linear_modules(model)}
    if masked:
        return [OnlyParameters(tracked_parameter_names(model)), UpdateMask(parameter_masks(model, chosen))]
    return [RowDeltas({n: torch.nonzero(c).flatten() for n, c in chosen.items()})]


def useful_flops(model_dir) -> float:
    """6 x non-embedding parameters x tokens, plus the tied LM head at answer tokens, per epoch."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with torch.device("meta"):  # shapes only, no weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs = [encode_pair(tok, p, t) for p, t in zip(*facts())]
    tokens = sum(len(p.ids) for p in pairs)
    answer_tokens = sum(p.n_target for p in pairs)
    embed = model.get_input_embeddings().weight
    non_embedding = sum(p.numel() for p in model.parameters()) - embed.numel()
    head = embed.shape[0] * embed.shape[1]  # vocabulary x hidden
    return 6 * non_embedding * tokens + 6 * head * answer_tokens


def main() -> None:
    torch.set_num_threads(2)
    model_dir = str(converted_model_dir())
    peak = matmul_peak_flops()
    useful = useful_flops(model_dir)
    contenders = [c for c in CONTENDERS if c != "routine_bf16" or bf16_supported(torch.device("cpu"))]
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for round_ in range(ROUNDS):
        for name in contenders:
            out = subprocess.run([sys.executable, __file__, "--run", name, model_dir], check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {name:24s} {runs[name][-1]['seconds']:.1f} s", flush=True)
    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    rate = {name: N_FACTS * EPOCHS / r["seconds"] for name, r in best.items()}
    ours, plain, tuned = best["routine"], best["trainer"], best["trainer_same_allocator"]
    speedup = rate["routine"] / rate["trainer"]
    per_round = [runs["trainer"][i]["seconds"] / runs["routine"][i]["seconds"] for i in range(ROUNDS)]
    per_round_same = [runs["trainer_same_allocator"][i]["seconds"] / runs["routine"][i]["seconds"] for i in range(ROUNDS)]
    targeted = rate["routine_neurons"] / rate["routine"]
    targeted_masked = rate["routine_neurons_masked"] / rate["routine"]
    share = useful * EPOCHS / ours["seconds"] / peak
    warm_share = useful / ours["epoch_seconds_after_first"] / peak
    print(f"{N_FACTS} facts x {EPOCHS} epochs, batch {BATCH}, lr {LR}, fp32, linear schedule, clipping 1.0; "
          f"best of {ROUNDS} rounds, every run a fresh process")
    print(f"routine: {ours['seconds']:.1f} s = {rate['routine']:.2f} facts*epochs/s, final accuracy {ours['accuracy']:.3f}")
    print(f"Trainer: {plain['seconds']:.1f} s = {rate['trainer']:.2f} facts*epochs/s, final accuracy {plain['accuracy']:.3f}")
    print(f"Trainer with the routine's allocator setting: {tuned['seconds']:.1f} s = "
          f"{rate['trainer_same_allocator']:.2f} facts*epochs/s, final accuracy {tuned['accuracy']:.3f}")
    print(f"speed ratio: {speedup:.2f}x the plain Trainer, {rate['routine'] / rate['trainer_same_allocator']:.2f}x the "
          f"Trainer with the same allocator setting (best runs)")
    print("speed ratio per round: " + ", ".join(f"{r:.2f}x" for r in per_round) + f" the plain Trainer (lowest "
          f"{min(per_round):.2f}x); " + ", ".join(f"{r:.2f}x" for r in per_round_same) + " with the same allocator")
    print(f"accuracy per round: routine " + ", ".join(f"{r['accuracy']:.3f}" for r in runs["routine"])
          + "; Trainer " + ", ".join(f"{r['accuracy']:.3f}" for r in runs["trainer"]))
    tn, tm = best["routine_neurons"], best["routine_neurons_masked"]
    print(f"targeted arm ({TARGETED_FRACTION:.0%} of neurons, row deltas): {tn['seconds']:.1f} s = "
          f"{rate['routine_neurons']:.2f} facts*epochs/s = {targeted:.2f}x the full arm "
          f"(whole-weight masks: {tm['seconds']:.1f} s = {targeted_masked:.2f}x the full arm); peak memory "
          f"{tn['peak_rss_gb']:.2f} GB vs {ours['peak_rss_gb']:.2f} GB")
    print(f"fp32 matmul peak here: {peak / 1e9:.1f} GFLOP/s; routine's useful FLOP rate "
          f"{useful * EPOCHS / ours['seconds'] / 1e9:.1f} GFLOP/s = {100 * share:.1f}% of peak")
    print(f"routine after its first epoch: {ours['epoch_seconds_after_first']:.2f} s per epoch, useful FLOP rate "
          f"{useful / ours['epoch_seconds_after_first'] / 1e9:.1f} GFLOP/s = {100 * warm_share:.1f}% of peak")
    print(f"peak memory (RSS) of the routine's process: {ours['peak_rss_gb']:.2f} GB "
          f"(Trainer's: {plain['peak_rss_gb']:.2f} GB)")
    pairs = (f"routine_facts_epochs_per_s={rate['routine']:.2f} trainer_facts_epochs_per_s={rate['trainer']:.2f} "
             f"speedup={speedup:.2f} speedup_same_allocator={rate['routine'] / rate['trainer_same_allocator']:.2f} "
             f"routine_acc={ours['accuracy']:.3f} trainer_acc={plain['accuracy']:.3f} "
             f"useful_gflops={useful * EPOCHS / ours['seconds'] / 1e9:.1f} peak_gflops={peak / 1e9:.1f} "
             f"share_of_peak={share:.3f} share_of_peak_after_first_epoch={warm_share:.3f} "
             f"peak_rss_gb={ours['peak_rss_gb']:.2f} min_round_speedup={min(per_round):.2f} "
             f"targeted_vs_full={targeted:.2f} targeted_masked_vs_full={targeted_masked:.2f} "
             f"targeted_peak_rss_gb={tn['peak_rss_gb']:.2f}")
    if "routine_bf16" in best:
        bf16 = best["routine_bf16"]
        print(f"routine with bf16 autocast: {rate['routine_bf16']:.2f} facts*epochs/s = "
              f"{rate['routine_bf16'] / rate['trainer']:.2f}x the plain Trainer, final accuracy {bf16['accuracy']:.3f}")
        pairs += f" bf16_facts_epochs_per_s={rate['routine_bf16']:.2f} bf16_acc={bf16['accuracy']:.3f}"
    else:
        print("routine with bf16 autocast: not run (no native bf16 on this CPU)")
    print(pairs)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        print(json.dumps(run_one(sys.argv[2], sys.argv[3])))
    else:
        main()
