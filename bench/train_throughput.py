"""Training throughput, memory and quality: sftlab against Hugging Face TRL's SFTTrainer on CPU.

    python bench/train_throughput.py --quick      # ~5-10 min: LoRA, generated set, 1 run each
    python bench/train_throughput.py              # ~40-60 min: 2 runs each on both data sets,
                                                  #   plus full fine-tuning and TRL's fp32 path
    python bench/train_throughput.py --model gemma3-270m --quick
                                                  # the Gemma 3 270M base on the instruct demo's
                                                  #   rows, sftlab's gemma turn format for both

What it measures, for each system on the same rows, model, LoRA and optimiser settings:

* supervised tokens/s  supervised tokens trained / wall time of the optimisation loop only
                       (sftlab: summary.json `train_seconds`; TRL: `trainer.train()` with eval,
                       saving and logging off). Loading, tokenisation and eval are excluded.
* all tokens/s         every real (non-pad) token the model processed, per second, same clock.
* peak RSS             the training process's own high-water mark (VmHWM, read right after
                       training), each run in a fresh subprocess; a psutil-sampled peak of the
                       whole child (eval included) is kept alongside.
* eval loss            after one epoch (the same supervised tokens for both): the mean
                       supervised-token loss of the final model on ~40 held-out conversations
                       that neither trained on, computed for both by the same function,
                       `sftlab.eval.loss.conversation_loss`, rendered by sftlab's Renderer with
                       the model's own template, fp32 weights (base + saved adapter), no autocast.
* MFU                  model FLOPs/s over a matmul ceiling measured in the same run (2048^3
                       bf16 and fp32 GEMMs, best of several, before and after the runs). Model
                       FLOPs per token: 4N for LoRA (forward + activation gradients), 6N for full
                       fine-tuning, N = the base model's parameters, over all tokens processed.

Models (`--model`): the embedded SmolLM2-135M-Instruct (its own template; no embedding rows
trained) or the Gemma 3 270M base (`gemma3-270m`: no template of its own, so both systems get
sftlab's gemma turn format on the tokenizer, and both train the embedding rows of
<start_of_turn>, <end_of_turn> and <eos> beside LoRA: sftlab through `train.token_rows`, TRL
through peft's `trainable_token_indices`; its 262,144-token head is where sftlab computes logits
only at supervised positions).

Runs alternate (sftlab, trl, sftlab-packed, sftlab, trl, ...), each in its own subprocess, so
slow drifts of the shared machine hit both systems alike and peak memory is per run. Ratios are
sftlab / TRL from the same invocation. Results: bench/results/train_throughput.json and a table.
See bench/README.md for the settings and what each number means.

Internally the script re-invokes itself (`_child <task> <spec.json>`) for every measured step:
data preparation, the matmul ceilings and each training run. The parent imports neither torch
nor sftlab, so nothing it holds leaks into a child's memory figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_throughput.json"
PARTIAL_OUT = HERE / "results" / "train_throughput.partial.json"
ALPACA = HERE.parent.parent / "shared" / "data" / "alpaca_en_demo.json"  # ../shared from the repo

# --- settings shared by both systems ---------------------------------------------------------
SEED = 0
MAX_LENGTH = 512
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.0
LR = {"lora": 2e-4, "full": 2e-5}
WARMUP_RATIO = 0.05  # sftlab's default
MIN_LR_RATIO = 0.1  # sftlab's default cosine floor
# TRL's learning rates come from sftlab's own schedule function (see `bench_trainer`):
# transformers' cosine_with_min_lr reaches the floor one step after the last, its warmup starts
# at lr 0 and rounds the warmup steps up; over a 7-step epoch that is ~12% more learning rate
# for TRL, and a 1-step warmup would make its first step a no-op. Same rates, same eval loss test.
MAX_GRAD_NORM = 1.0
BATCH_TOKENS, GRAD_ACCUM = 1024, 2  # sftlab's defaults: 2 micro-batches of 1024 tokens per step ...
TRL_ROWS_PER_STEP = 4  # ... and TRL's packed rows of MAX_LENGTH per step: the same 2048 tokens
EVAL_ROWS = 40  # held-out conversations per data set, never trained on
FLOPS_PER_PARAM = {"lora": 4, "full": 6}

# Data sizes. The generated set has ~170 training rows (~7.7k supervised tokens) after the
# held-out split; TRL trains ~90 supervised tokens/s here, so the full Alpaca sample (~140k)
# would take ~25 min per TRL run: cap it by supervised tokens instead.
QUICK_DATASETS = {"generated": None}
FULL_DATASETS = {"generated": None, "alpaca": 16_000}
MODELS = {
    # --model: report label, and the data sets of --quick and of a full run (first: full FT's)
    "default": ("default (embedded SmolLM2-135M-Instruct, fp32 safetensors)",
                QUICK_DATASETS, FULL_DATASETS),
    "gemma3-270m": ("gemma3-270m (embedded Gemma 3 270M base, fp32 safetensors, sftlab's gemma "
                    "turn format)", {"instruct": None}, {"instruct": None, "alpaca": 16_000}),
}  # fmt: skip

VARIANTS = {
    "sftlab": {"system": "sftlab", "pack": "auto", "short": "sftlab",
               "label": "sftlab, its CPU defaults (pack.enabled and attn_implementation auto)"},
    "sftlab_packed": {"system": "sftlab", "pack": True, "short": "sftlab+pack",
                      "label": "sftlab with pack.enabled=true"},
    "trl": {"system": "trl", "bf16": True, "packing": True, "short": "trl",
            "label": "TRL SFTTrainer, bf16 autocast + padding-free bfd packing"},
    "trl_default": {"system": "trl", "bf16": False, "packing": False, "short": "trl-fp32",
                    "label": "TRL SFTTrainer, fp32, no packing"},
}  # fmt: skip


@dataclass(frozen=True)
class Run:
    variant: str
    dataset: str
    method: str  # lora | full
    rep: int

    @property
    def system(self) -> str:
        return VARIANTS[self.variant]["system"]

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.method}-{self.dataset}-{self.rep}"


# =============================================================================================
# Children: each measured step runs in a fresh interpreter


def child_env() -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",  # a CPU benchmark, even on a machine with a GPU
    )  # fmt: skip
    return env


def peak_rss_mb() -> dict:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; ru_maxrss can
    carry the parent's high-water mark across vfork+exec, so it is kept only for reference."""
    out = {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    out["peak_rss_mb"] = out.get("vmhwm_mb", out["ru_maxrss_mb"])
    return out


def read_messages(path: Path) -> list[list[dict]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def to_conversations(rows: list[list[dict]]):
    from sftlab.core.types import Conversation, Message

    return [Conversation(tuple(Message(m["role"], m["content"]) for m in msgs)) for msgs in rows]


def eval_renderer(model: str):
    """sftlab's Renderer for the template training uses (`auto`: the model's own, or for a model
    without one its family's library format), system_prompt unset."""
    from sftlab.config import TemplateConfig
    from sftlab.model.load import load_tokenizer, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    tokenizer = load_tokenizer(resolve_model(model))
    config = TemplateConfig(max_length=MAX_LENGTH, chat_template="auto")
    return Renderer(tokenizer, build_chat_format(tokenizer, config))


def marker_rows(renderer) -> list[int]:
    """Embedding rows both systems train beside LoRA: for a model without its own template, the
    turn markers of the chosen format and EOS (issue 14's measurement); none otherwise."""
    from sftlab.template import library

    name = getattr(renderer.fmt, "name", "model")
    if name == "model":
        return []
    tokenizer = renderer.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in library.MARKERS.get(name, ())]
    return sorted({*ids, renderer.fmt.end_of_turn_id, tokenizer.eos_token_id} - {None})


def heldout_loss(model, eval_file: Path, model_name: str) -> float:
    from sftlab.eval.loss import conversation_loss

    model.eval()
    convs = to_conversations(read_messages(eval_file))
    return conversation_loss(model, eval_renderer(model_name), convs)


def trained_eval_loss(weights: Path, method: str, eval_file: Path, model_name: str) -> float:
    """Load what a run saved onto the fp32 base (the same way for both systems) and score it."""
    import torch

    from sftlab.model.load import load_model, resolve_model

    if method == "lora":
        from peft import PeftModel

        base = load_model(resolve_model(model_name), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(weights))  # restores trained token rows too
    else:
        model = load_model(resolve_model(str(weights)), dtype=torch.float32)
    return heldout_loss(model, eval_file, model_name)


# --- data ------------------------------------------------------------------------------------


def generated_conversations(work: Path):
    """The demo's own data, written the way `sftlab demo` writes it (identity + general, 1:1)."""
    from sftlab.config import SourceConfig
    from sftlab.data.mixture import load_source
    from sftlab.recipes import demo

    identity, general, _ = demo.write_data(work / "demo-data")
    return [
        c
        for path in (identity, general)
        for c in load_source(SourceConfig(path=str(path))).conversations
    ]


def instruct_conversations(work: Path):
    """The instruct demo's training rows (`sftlab demo --kind instruct`)."""
    from sftlab.config import SourceConfig
    from sftlab.data.mixture import load_source
    from sftlab.recipes.instruct_data import write_instruction_set

    train_file, _ = write_instruction_set(work / "instruct-data")
    return list(load_source(SourceConfig(path=str(train_file))).conversations)


def alpaca_conversations():
    from sftlab.config import SourceConfig
    from sftlab.data.mixture import load_source

    return list(load_source(SourceConfig(path=str(ALPACA))).conversations)


def usable(conv, example) -> bool:
    """Both systems can train it identically: one assistant turn, last, and it fits untruncated."""
    msgs = conv.messages
    single_answer = sum(m.role == "assistant" for m in msgs) == 1 and msgs[-1].role == "assistant"
    return single_answer and len(example) <= MAX_LENGTH and example.n_supervised > 0


def split_dataset(name: str, convs, renderer, rows: int | None, target: int | None) -> dict:
    """Seeded held-out split, then the training rows: `rows` of them, or enough to reach
    `target` supervised tokens, or all."""
    encoded = [(c, renderer.encode(c)) for c in convs]
    kept = [(c, e) for c, e in encoded if usable(c, e)]
    random.Random(f"{SEED}/bench/{name}").shuffle(kept)
    heldout, pool = kept[:EVAL_ROWS], kept[EVAL_ROWS:]
    train, supervised = [], 0
    for conv, example in pool:
        if (rows is not None and len(train) >= rows) or (
            rows is None and target and supervised >= target
        ):
            break
        train.append((conv, example))
        supervised += example.n_supervised
    return {
        "train": train,
        "eval": heldout,
        "dropped": len(convs) - len(kept),
        "available": len(pool),
    }


def write_rows(path: Path, pairs) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for conv, _ in pairs:
            msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
            handle.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def child_prepare(spec: dict) -> dict:
    """Write each data set's train/eval files; count tokens; score the base model."""
    import torch

    from sftlab.model.load import load_model, resolve_model

    work, model = Path(spec["workdir"]), spec["model"]
    renderer = eval_renderer(model)
    ref = resolve_model(model)
    base = load_model(ref, dtype=torch.float32)
    out = {
        "model": {"path": ref.path, "parameters": sum(p.numel() for p in base.parameters()),
                  "template": getattr(renderer.fmt, "name", "model"),
                  "token_rows": marker_rows(renderer)},
        "datasets": {},
    }  # fmt: skip
    sources = {"generated": lambda: generated_conversations(work),
               "instruct": lambda: instruct_conversations(work), "alpaca": alpaca_conversations}  # fmt: skip
    for name, size in spec["datasets"].items():
        convs = sources[name]()
        split = split_dataset(name, convs, renderer, size["rows"], size["target_supervised"])
        folder = work / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_rows(folder / "train.jsonl", split["train"])
        write_rows(folder / "eval.jsonl", split["eval"])
        out["datasets"][name] = {
            "source": {"generated": "sftlab demo data (identity + general)",
                       "instruct": "sftlab instruct demo data"}.get(name, str(ALPACA)),
            "train_file": str(folder / "train.jsonl"), "eval_file": str(folder / "eval.jsonl"),
            "rows_in": len(convs), "rows_unusable": split["dropped"],
            "train_rows": len(split["train"]), "train_rows_available": split["available"],
            "train_tokens": sum(len(e) for _, e in split["train"]),
            "train_supervised_tokens": sum(e.n_supervised for _, e in split["train"]),
            "eval_rows": len(split["eval"]),
            "eval_supervised_tokens": sum(e.n_supervised for _, e in split["eval"]),
            "eval_loss_base": heldout_loss(base, folder / "eval.jsonl", model),
        }  # fmt: skip
    return out


# --- matmul ceilings -------------------------------------------------------------------------


def child_ceilings(spec: dict) -> dict:
    import torch

    def gflops(dtype, n: int = 2048, warmup: int = 2, repeats: int = 10) -> float:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        for _ in range(warmup):
            a @ b
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        return 2 * n**3 / best / 1e9

    return {
        "bf16_gflops": round(gflops(torch.bfloat16), 1),
        "fp32_gflops": round(gflops(torch.float32), 1),
        "threads": torch.get_num_threads(),
        "size": 2048,
    }


# --- training runs ---------------------------------------------------------------------------


def child_sftlab(spec: dict) -> dict:
    from sftlab import config as c
    from sftlab.recipes.sft import train

    run_dir, method = Path(spec["run_dir"]), spec["method"]
    config = c.RunConfig(
        name=spec["name"],
        output_dir=str(run_dir),
        model=c.ModelConfig(name=spec["model"]),
        data=c.DataConfig(sources=[c.SourceConfig(path=spec["train_file"], format="messages")], eval_rows=0, seed=SEED),
        template=c.TemplateConfig(max_length=MAX_LENGTH, chat_template="auto"),  # system_prompt unset
        pack=c.PackConfig(enabled=spec["pack"]),
        lora=c.LoraConfig(r=LORA_R, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, target_modules="all-linear"),
        train=c.TrainConfig(
            method=method, lr=LR[method], epochs=1, batch_tokens=BATCH_TOKENS, grad_accum=GRAD_ACCUM,
            warmup_ratio=WARMUP_RATIO, schedule="cosine", min_lr_ratio=MIN_LR_RATIO,
            max_grad_norm=MAX_GRAD_NORM, seed=SEED, token_rows=spec["token_rows"] or "none",
        ),
    )  # fmt: skip
    train(config)
    memory = peak_rss_mb()
    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    weights = run_dir / ("adapter" if method == "lora" else "model")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, filter(None, lines)) if "step_seconds" in r]
    seconds, supervised = (
        [r["step_seconds"] for r in steps],
        [r["supervised_tokens"] for r in steps],
    )
    return {
        "train_seconds": summary["train_seconds"],
        "tokens": summary["tokens"],
        "supervised_tokens": summary["supervised_tokens"],
        "steps": summary["steps"],
        "train_rows": summary["train_examples"],
        "step_seconds": [round(x, 3) for x in seconds], "step_supervised_tokens": supervised,
        "supervised_tokens_per_s_after_first_step": after_first_step(seconds, supervised),
        "eval_loss": trained_eval_loss(weights, method, Path(spec["eval_file"]), spec["model"]),
        "memory": memory,
        "trained_token_rows": manifest.get("trained_token_rows"),
        "settings": {k: manifest[k] for k in ("precision", "attention", "packing")}
        | {"batch_tokens": BATCH_TOKENS, "frozen_base_dtype": "bf16" if method == "lora" and manifest["precision"] == "bf16" else "fp32"},
    }  # fmt: skip


def trl_config(spec: dict, run_dir: Path, mean_row_tokens: float):
    from trl import SFTConfig

    packing = spec["packing"]
    # Packed: 4 rows of 512 per step. Unpacked: as many rows as average 2048 tokens.
    batch = (
        TRL_ROWS_PER_STEP if packing else max(1, round(BATCH_TOKENS * GRAD_ACCUM / mean_row_tokens))
    )
    return SFTConfig(
        output_dir=str(run_dir), num_train_epochs=1, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=LR[spec["method"]], weight_decay=0.0,
        lr_scheduler_type="cosine",  # replaced in `bench_trainer` by sftlab's own schedule
        warmup_steps=WARMUP_RATIO,  # transformers 5: a float < 1 is a ratio (warmup_ratio is gone)
        max_grad_norm=MAX_GRAD_NORM, seed=SEED, data_seed=SEED,
        bf16=spec["bf16"], fp16=False, use_cpu=True,  # bf16 autocast on CPU needs use_cpu=True
        packing=packing, packing_strategy="bfd", max_length=MAX_LENGTH,
        completion_only_loss=True,
        activation_checkpointing=False,  # SFTConfig's default is on (as gradient_checkpointing=True)
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip


def bench_trainer(trainer_class):
    """`trainer_class` with sftlab's learning-rate schedule and a per-step record.

    Schedule: warmup, then cosine to the floor on the last step, from the same function sftlab's
    loop calls, so both runs use the same rates. Record: wall seconds and supervised tokens of
    each optimizer step (sftlab writes the same to metrics.jsonl)."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback

    from sftlab.train.optim import lr_at

    class StepClock(TrainerCallback):
        def __init__(self, seconds: list):
            self.seconds, self.started = seconds, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    class Trainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_seconds, self.step_supervised = [], []
            self.add_callback(StepClock(self.step_seconds))

        def training_step(self, model, inputs, *args, **kwargs):
            self.step_supervised.append(int((inputs["labels"] != -100).sum()))  # grad_accum is 1
            return super().training_step(model, inputs, *args, **kwargs)

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                warmup = round(WARMUP_RATIO * num_training_steps)  # as sftlab.recipes.sft does

                def factor(step: int) -> float:
                    return lr_at(step, num_training_steps, 1.0, warmup, "cosine", MIN_LR_RATIO)

                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    return Trainer


def after_first_step(seconds: list[float], supervised: list[int]) -> float | None:
    """Supervised tokens/s over every step but the first (which pays one-time warm-up costs)."""
    if len(seconds) < 2 or len(seconds) != len(supervised):
        return None
    return sum(supervised[1:]) / max(sum(seconds[1:]), 1e-9)


def trl_counts(dataset) -> tuple[int, int]:
    """(tokens, supervised tokens) of the prepared (tokenised, maybe packed) training set."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    supervised = sum(sum(1 for t in labels if t != -100) for labels in dataset["labels"])
    return tokens, supervised


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTTrainer

    from sftlab.model.load import resolve_model

    run_dir, method = Path(spec["run_dir"]), spec["method"]
    ref = resolve_model(spec["model"])
    set_seed(SEED)  # the LoRA weights are initialised inside SFTTrainer.__init__
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if not tokenizer.chat_template:  # a base model: the turn format sftlab trains it with
        tokenizer.chat_template = eval_renderer(spec["model"]).fmt.template
    model = AutoModelForCausalLM.from_pretrained(
        ref.path, dtype=torch.float32, attn_implementation="sdpa"
    )
    # Conversational prompt-completion: TRL then trains on the completion tokens only.
    rows = [
        {"prompt": m[:-1], "completion": [m[-1]]} for m in read_messages(Path(spec["train_file"]))
    ]
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                      target_modules="all-linear", task_type="CAUSAL_LM",
                      trainable_token_indices=spec["token_rows"] or None)  # fmt: skip
    trainer = bench_trainer(SFTTrainer)(
        model=model, args=trl_config(spec, run_dir, spec["mean_row_tokens"]),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=lora if method == "lora" else None,
    )  # fmt: skip
    tokens, supervised = trl_counts(trainer.train_dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    memory = peak_rss_mb()
    weights = run_dir / ("adapter" if method == "lora" else "model")
    trainer.model.save_pretrained(str(weights))
    args = trainer.args
    steps = trainer.state.global_step
    step_seconds, step_supervised = trainer.step_seconds, trainer.step_supervised
    del trainer, model
    return {
        "train_seconds": round(seconds, 2), "tokens": tokens, "supervised_tokens": supervised,
        "steps": steps, "train_rows": len(rows),
        "step_seconds": [round(x, 3) for x in step_seconds], "step_supervised_tokens": step_supervised,
        "supervised_tokens_per_s_after_first_step": after_first_step(step_seconds, step_supervised),
        "eval_loss": trained_eval_loss(weights, method, Path(spec["eval_file"]), spec["model"]),
        "memory": memory,
        "trained_token_rows": spec["token_rows"],
        "settings": {"precision": "bf16" if args.bf16 else "fp32", "attention": "sdpa",
                     "packing": f"{args.packing_strategy} (padding-free)" if args.packing else False,
                     "per_device_train_batch_size": args.per_device_train_batch_size,
                     "activation_checkpointing": args.activation_checkpointing,
                     "optim": getattr(args.optim, "value", str(args.optim)),
                     "frozen_base_dtype": "fp32"},
    }  # fmt: skip


CHILDREN = {
    "prepare": child_prepare,
    "ceilings": child_ceilings,
    "sftlab": child_sftlab,
    "trl": child_trl,
}


def child_main(task: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = CHILDREN[task](spec)
    Path(spec["result_file"]).write_text(json.dumps(result, indent=2))


# =============================================================================================
# Parent: plan, run the children in turn, aggregate, report


class ChildFailed(RuntimeError):
    pass


def run_child(task: str, spec: dict, work: Path, name: str) -> dict:
    """Run one child; returns its result plus the wall time and a psutil-sampled peak RSS."""
    spec_file, log_file = work / f"{name}.spec.json", work / f"{name}.log"
    spec = {**spec, "result_file": str(work / f"{name}.result.json")}
    spec_file.write_text(json.dumps(spec, indent=2))
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", task, str(spec_file)]
    started = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        try:
            watched = watch(proc)
        except KeyboardInterrupt:
            proc.terminate()  # Ctrl-C reaches the child too; make sure it is gone before returning
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise ChildFailed(f"{name} failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    result = json.loads(Path(spec["result_file"]).read_text())
    result["child_seconds"] = round(time.perf_counter() - started, 1)
    if watched:
        result.setdefault("memory", {})["sampled_peak_rss_mb"] = watched["sampled_peak_rss_mb"]
        result["other_cpu_share"] = watched["other_cpu_share"]
    result["log"] = str(log_file)
    return result


def watch(proc: subprocess.Popen, interval: float = 0.25) -> dict:
    """Wait for `proc`, sampling with psutil (when installed) its RSS and CPU time and the
    machine's. `other_cpu_share` is the share of the machine's CPU time that went to anything
    but the child while it ran: ~0 on an idle machine; above ~0.1 the run was contended."""
    try:
        import psutil

        handle = psutil.Process(proc.pid)
    except Exception:  # psutil missing, or the child already gone
        proc.wait()
        return {}

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    started, busy_before = time.perf_counter(), busy()
    peak, child_cpu = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss)
            cpu = handle.cpu_times()
            child_cpu = cpu.user + cpu.system
        except psutil.Error:
            break
        time.sleep(interval)
    proc.wait()
    capacity = (time.perf_counter() - started) * (psutil.cpu_count() or 1)
    other = max(0.0, busy() - busy_before - child_cpu)
    return {
        "sampled_peak_rss_mb": round(peak / 2**20, 1),
        "other_cpu_share": round(other / capacity, 3),
    }


def plan_runs(datasets: list[str], reps: int, full_mode: bool, only: str | None) -> list[Run]:
    """Alternating order: sftlab, trl, sftlab-packed per data set and repetition; full
    fine-tuning and TRL's fp32 path on the first data set."""
    runs = []
    for rep in range(1, reps + 1):
        for ds in datasets:
            runs += [
                Run("sftlab", ds, "lora", rep),
                Run("trl", ds, "lora", rep),
                Run("sftlab_packed", ds, "lora", rep),
            ]
    if full_mode:
        runs += [Run("sftlab", datasets[0], "full", 1), Run("trl", datasets[0], "full", 1)]
        runs += [Run("trl_default", datasets[0], "lora", 1)]
    return [r for r in runs if only is None or r.system == only]


def run_spec(run: Run, data: dict, work: Path) -> dict:
    ds = data["datasets"][run.dataset]
    return {
        **VARIANTS[run.variant], "name": run.name, "method": run.method,
        "run_dir": str(work / "runs" / run.name), "model": data["model"]["name"],
        "token_rows": data["model"]["token_rows"],
        "train_file": ds["train_file"], "eval_file": ds["eval_file"],
        "mean_row_tokens": ds["train_tokens"] / max(ds["train_rows"], 1),
    }  # fmt: skip


def add_rates(result: dict, run: Run, parameters: int, ceilings: dict) -> dict:
    seconds = max(result["train_seconds"], 1e-9)
    result["supervised_tokens_per_s"] = result["supervised_tokens"] / seconds
    result["tokens_per_s"] = result["tokens"] / seconds
    model_flops = FLOPS_PER_PARAM[run.method] * parameters * result["tokens_per_s"]
    result["model_gflops_per_s"] = model_flops / 1e9
    result["mfu_vs_bf16"] = model_flops / (ceilings["bf16_gflops"] * 1e9)
    result["mfu_vs_fp32"] = model_flops / (ceilings["fp32_gflops"] * 1e9)
    return {**asdict(run), "system": run.system, **result}


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def geomean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


AGG_KEYS = ("supervised_tokens_per_s", "supervised_tokens_per_s_after_first_step", "tokens_per_s",
            "train_seconds", "supervised_tokens", "tokens", "steps", "eval_loss",
            "mfu_vs_bf16", "mfu_vs_fp32", "model_gflops_per_s")  # fmt: skip


def aggregate(runs: list[dict]) -> dict | None:
    """Means over repetitions (per-run values kept too)."""
    if not runs:
        return None
    out = {key: mean([r[key] for r in runs]) for key in AGG_KEYS}
    out["peak_rss_mb"] = mean([r["memory"]["peak_rss_mb"] for r in runs])
    out["per_run"] = {
        key: [r[key] for r in runs] for key in ("supervised_tokens_per_s", "eval_loss")
    }
    out["per_run"]["peak_rss_mb"] = [r["memory"]["peak_rss_mb"] for r in runs]
    out["runs"] = len(runs)
    out["other_cpu_share_max"] = max((r.get("other_cpu_share") or 0.0 for r in runs), default=None)
    out["train_rows"] = runs[0]["train_rows"]
    out["settings"] = runs[0]["settings"]
    return out


def compare(a: dict | None, b: dict | None) -> dict:
    """a / b for the three headline numbers (None where either side is missing)."""
    if not a or not b:
        return {
            "speedup_supervised_tokens_per_s": None,
            "peak_rss_ratio": None,
            "eval_loss_ratio": None,
        }
    return {
        "speedup_supervised_tokens_per_s": ratio(a["supervised_tokens_per_s"], b["supervised_tokens_per_s"]),
        "speedup_tokens_per_s": ratio(a["tokens_per_s"], b["tokens_per_s"]),
        "speedup_after_first_step": ratio(a["supervised_tokens_per_s_after_first_step"], b["supervised_tokens_per_s_after_first_step"]),
        "peak_rss_ratio": ratio(a["peak_rss_mb"], b["peak_rss_mb"]),
        "eval_loss_ratio": ratio(a["eval_loss"], b["eval_loss"]),
        "paired_speedups": [ratio(x, y) for x, y in zip(a["per_run"]["supervised_tokens_per_s"], b["per_run"]["supervised_tokens_per_s"], strict=False)],
    }  # fmt: skip


def summarise(results: list[dict], datasets: list[str]) -> dict:
    """Per variant and data set aggregates, the sftlab/TRL ratios, and the full-FT comparison."""

    def agg(variant: str, dataset: str, method: str = "lora"):
        return aggregate(
            [
                r
                for r in results
                if (r["variant"], r["dataset"], r["method"]) == (variant, dataset, method)
            ]
        )

    out = {v: {ds: agg(v, ds) for ds in datasets} for v in VARIANTS}
    by_dataset = {
        ds: {"sftlab/trl": compare(out["sftlab"][ds], out["trl"][ds]),
             "sftlab_packed/trl": compare(out["sftlab_packed"][ds], out["trl"][ds]),
             "trl_default/trl": compare(out["trl_default"][ds], out["trl"][ds])}
        for ds in datasets
    }  # fmt: skip
    for key in ("speedup_supervised_tokens_per_s", "peak_rss_ratio", "eval_loss_ratio"):
        out[key] = geomean([by_dataset[ds]["sftlab/trl"][key] for ds in datasets])
    out["ratios_by_dataset"] = by_dataset
    first = datasets[0] if datasets else "generated"
    full = {"sftlab": agg("sftlab", first, "full"), "trl": agg("trl", first, "full")}
    if full["sftlab"] or full["trl"]:
        out["full_finetuning"] = {
            "dataset": first,
            **full,
            **compare(full["sftlab"], full["trl"]),
        }
    return out


# --- report ----------------------------------------------------------------------------------


def fmt(value, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_rows(report: dict):
    """(data set, method, variant, aggregate) for every measured configuration."""
    for variant in VARIANTS:
        for ds, agg in (report.get(variant) or {}).items():
            if agg:
                yield ds, "lora", variant, agg
    full = report.get("full_finetuning") or {}
    for variant in ("sftlab", "trl"):
        if full.get(variant):
            yield full["dataset"], "full", variant, full[variant]


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    table = Table(title="Training throughput on CPU: sftlab vs TRL (means over runs)")
    for col in ("data", "method", "system", "runs", "sup. tokens", "sup. tok/s", "after step 1", "all tok/s",
                "peak RSS MB", "eval loss (base ->)", "MFU bf16", "MFU fp32", "steps"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("data", "method", "system") else "right")
    for ds, method, variant, a in table_rows(report):
        base = report["datasets"][ds]["eval_loss_base"]
        table.add_row(
            ds, method, VARIANTS[variant]["short"], str(a["runs"]), fmt(a["supervised_tokens"], ",.0f"),
            fmt(a["supervised_tokens_per_s"], ".1f"), fmt(a["supervised_tokens_per_s_after_first_step"], ".1f"),
            fmt(a["tokens_per_s"], ".1f"), fmt(a["peak_rss_mb"], ",.0f"),
            f"{base:.3f} -> {fmt(a['eval_loss'], '.3f')}", fmt(a["mfu_vs_bf16"], ".1%"),
            fmt(a["mfu_vs_fp32"], ".1%"), fmt(a["steps"], ".0f"),
        )  # fmt: skip
    console.print(table)
    shown = {variant for _, _, variant, _ in table_rows(report)}
    for variant in (v for v in VARIANTS if v in shown):
        console.print(f"  {VARIANTS[variant]['short']:<12} {VARIANTS[variant]['label']}")
    if report["ratios_by_dataset"] and any(
        r.get("speedup_supervised_tokens_per_s")
        for cmp in report["ratios_by_dataset"].values()
        for r in cmp.values()
    ):
        console.print(ratio_table(report))
    c = report["ceilings"]
    console.print(
        f"matmul ceilings (2048^3, best of 10): bf16 {c['bf16_gflops']:.0f} GFLOP/s, fp32 {c['fp32_gflops']:.0f} GFLOP/s; "
        f"model FLOPs/token = {FLOPS_PER_PARAM['lora']}N (LoRA), {FLOPS_PER_PARAM['full']}N (full), N = {report['model']['parameters']:,}"
    )  # fmt: skip
    contention = report.get("other_cpu_share_max")
    if contention is not None and contention > 0.1:
        console.print(f"[bold red]warning:[/] other processes took up to {contention:.0%} of the CPU during a run; "
                      "rerun on an idle machine before quoting these numbers")  # fmt: skip
    console.print(
        f"headline (sftlab / TRL, geometric mean over data sets): speedup {fmt(report['speedup_supervised_tokens_per_s'], '.2f', 'x')}, "
        f"peak RSS ratio {fmt(report['peak_rss_ratio'], '.2f')}, eval loss ratio {fmt(report['eval_loss_ratio'], '.3f')}"
    )  # fmt: skip


def ratio_table(report: dict):
    from rich.table import Table

    table = Table(title="Ratios from this invocation (a / b; speedup > 1 and ratios < 1 favour a)")
    for col in ("data", "method", "a / b", "sup. tok/s", "after step 1", "all tok/s", "peak RSS", "eval loss",
                "paired speedups"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("data", "method", "a / b") else "right")
    rows = [(ds, "lora", name, r) for ds, cmp in report["ratios_by_dataset"].items() for name, r in cmp.items()]  # fmt: skip
    if report.get("full_finetuning"):
        rows.append(
            (report["full_finetuning"]["dataset"], "full", "sftlab/trl", report["full_finetuning"])
        )
    for ds, method, name, r in rows:
        if r.get("speedup_supervised_tokens_per_s") is None:
            continue
        paired = ", ".join(fmt(x, ".2f") for x in r.get("paired_speedups", []))
        table.add_row(ds, method, name, fmt(r["speedup_supervised_tokens_per_s"], ".2f", "x"),
                      fmt(r["speedup_after_first_step"], ".2f", "x"), fmt(r["speedup_tokens_per_s"], ".2f", "x"), fmt(r["peak_rss_ratio"], ".2f"),
                      fmt(r["eval_loss_ratio"], ".3f"), paired)  # fmt: skip
    return table


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def machine_info() -> dict:
    cpu, flags = platform.processor(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in info.splitlines()
                if ln.startswith("model name")
            ),
            cpu,
        )
        flags = info
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "avx512_bf16": " avx512_bf16" in flags,
            "amx_bf16": " amx_bf16" in flags, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}  # fmt: skip


def versions() -> dict:
    out = {}
    for package in ("sftlab", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def settings() -> dict:
    return {
        "max_length": MAX_LENGTH,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT, "target_modules": "all-linear"},
        "lr": LR, "optimizer": "AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0)",
        "schedule": "cosine to min_lr_ratio x lr on the last step (sftlab.train.optim.lr_at, used by both)",
        "warmup_ratio": WARMUP_RATIO, "min_lr_ratio": MIN_LR_RATIO, "max_grad_norm": MAX_GRAD_NORM,
        "seed": SEED, "epochs": 1, "sftlab_batch_tokens": BATCH_TOKENS, "sftlab_grad_accum": GRAD_ACCUM,
        "trl_packed_rows_per_step": TRL_ROWS_PER_STEP, "eval_rows": EVAL_ROWS,
        "model_flops_per_token": {"lora": "4N", "full": "6N"},
        "throughput_clock": {"sftlab": "summary.json train_seconds", "trl": "trainer.train() wall time"},
    }  # fmt: skip


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="LoRA on the generated set, one run each (<10 min)"
    )
    p.add_argument("--only", choices=["sftlab", "trl"], help="run one system only (no ratios)")
    p.add_argument("--model", choices=list(MODELS), default="default",
                   help="embedded model to train (default: SmolLM2-135M-Instruct)")  # fmt: skip
    p.add_argument("--rows", type=int, help="training rows per data set (default: quick = all of the generated set, "
                   "full = all generated + Alpaca up to 16k supervised tokens)")  # fmt: skip
    p.add_argument("--reps", type=int, help="repetitions per system (default: 1 quick, 2 full)")
    p.add_argument("--out", type=Path, help=f"result JSON (default {DEFAULT_OUT}; with --rows or --only "
                   f"{PARTIAL_OUT}, so a partial run never replaces a whole one)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory (data, runs, logs)")
    return p.parse_args(argv)


def chosen_datasets(args) -> dict:
    _, quick, full = MODELS[args.model]
    sizes = dict(quick if args.quick else full)
    if "alpaca" in sizes and not ALPACA.is_file():
        print(f"note: {ALPACA} not found; the Alpaca runs are skipped")
        del sizes["alpaca"]
    return {
        name: {"rows": args.rows, "target_supervised": target} for name, target in sizes.items()
    }


@dataclass
class Session:
    """One invocation: what was prepared and measured so far."""

    args: argparse.Namespace
    work: Path
    started: float
    machine: dict
    data: dict
    ceilings: list
    results: list  # (Run, result) in run order
    failures: list
    interrupted: bool = False


def start_session(args, work: Path) -> Session:
    machine = machine_info()
    if machine["loadavg_at_start"][0] > 0.5:
        print(
            f"warning: load average {machine['loadavg_at_start'][0]:.2f}; the CPU is not idle, numbers will be noisy"
        )
    started = time.time()
    sizes = chosen_datasets(args)
    print("preparing data (held-out split, token counts, base-model eval loss) ...", flush=True)
    spec = {"workdir": str(work), "datasets": sizes, "model": args.model}
    data = run_child("prepare", spec, work, "prepare")
    data["model"]["name"] = args.model
    for name, ds in data["datasets"].items():
        print(f"  {name}: {ds['train_rows']} training rows ({ds['train_supervised_tokens']:,} supervised of "
              f"{ds['train_tokens']:,} tokens), {ds['eval_rows']} held out, base eval loss {ds['eval_loss_base']:.3f}")  # fmt: skip
    ceilings = [run_child("ceilings", {}, work, "ceilings-start")]
    return Session(args, work, started, machine, data, ceilings, [], [])


def run_all(session: Session) -> None:
    """Every planned run in order; a failed run is recorded and skipped, Ctrl-C stops cleanly.
    The result file is rewritten after each run, so a long invocation never loses finished runs."""
    args = session.args
    datasets = list(session.data["datasets"])
    runs = plan_runs(datasets, args.reps or (1 if args.quick else 2), not args.quick, args.only)
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.name} ...", end=" ", flush=True)
        try:
            result = run_child(
                run.system, run_spec(run, session.data, session.work), session.work, run.name
            )
        except ChildFailed as exc:
            print(f"FAILED\n{exc}", flush=True)
            session.failures.append({"run": run.name, "error": str(exc)})
            continue
        except KeyboardInterrupt:
            print("\ninterrupted: reporting the runs finished so far")
            session.interrupted = True
            return
        session.results.append((run, result))
        print(f"{result['supervised_tokens'] / result['train_seconds']:.1f} supervised tok/s, "
              f"{result['train_seconds']:.0f} s training, eval loss {result['eval_loss']:.3f} ({result['child_seconds']:.0f} s)")  # fmt: skip
        if result.get("other_cpu_share", 0) > 0.1:
            print(
                f"    warning: other processes used {result['other_cpu_share']:.0%} of the CPU during this run"
            )
        write_json_atomic(args.out, build_report(session))


def build_report(session: Session) -> dict:
    args, data = session.args, session.data
    best = {k: max(c[k] for c in session.ceilings) for k in ("bf16_gflops", "fp32_gflops")}
    rows = [
        add_rates(dict(result), run, data["model"]["parameters"], best)
        for run, result in session.results
    ]
    machine = {**session.machine, "loadavg_now": os.getloadavg()}
    report = {
        "benchmark": "train_throughput", "mode": "quick" if args.quick else "full",
        "rows_override": args.rows, "reps_override": args.reps, "only": args.only,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(session.started)),
        "machine": machine, "versions": versions(), "ceilings": {**best, "measurements": session.ceilings},
        "model": {**data["model"], "label": MODELS[data["model"]["name"]][0]},
        "settings": settings(), "datasets": data["datasets"],
    }  # fmt: skip
    report.update(summarise(rows, list(data["datasets"])))
    report["runs"] = rows
    report["other_cpu_share_max"] = max(
        (r.get("other_cpu_share") or 0.0 for r in rows), default=None
    )
    report["failures"] = session.failures
    report["interrupted"] = session.interrupted
    report["wall_seconds"] = round(time.time() - session.started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        child_main(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    if args.out is None:
        args.out = PARTIAL_OUT if args.rows or args.only else DEFAULT_OUT
    work = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    try:
        session = start_session(args, work)
    except ChildFailed as exc:
        print(f"\n{exc}\nwork directory kept: {work}", file=sys.stderr)
        return 1
    run_all(session)
    if not session.interrupted:
        session.ceilings.append(run_child("ceilings", {}, work, "ceilings-end"))
    report = build_report(session)
    write_json_atomic(args.out, report)
    print_report(report)
    print(f"results written to {args.out} ({report['wall_seconds']:.0f} s)")
    if args.keep or session.failures:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 130 if session.interrupted else (1 if session.failures else 0)


if __name__ == "__main__":
    sys.exit(main())
