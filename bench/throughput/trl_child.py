"""One TRL training run, in its own process: `python -m throughput.trl_child SPEC.json`.

Never imports sftlab (a test checks `sys.modules`): everything it needs from the sftlab side
(the model's folder, the chat template, the trained token rows) arrives in the spec, written by
the prepare child. The spec's `trl` block is one configuration of the sweep (see sweep.py):

    accum            micro-batches per optimizer step (1, 2, 4); the step holds TOKENS_PER_STEP
    packing          None, "bfd" (padding-free, TRL's default strategy) or "wrapped"
    padding_free     flatten each micro-batch into one sequence (forced on by bfd packing)
    bf16             CPU bf16 autocast (TrainingArguments bf16 with use_cpu)
    base_dtype       "fp32" or "bf16": the dtype the frozen base is loaded in
    attn             "sdpa" or "eager"
    group_by_length  batch rows of similar length (unpacked only)
    liger            use_liger_kernel
"""

from __future__ import annotations

import time
from pathlib import Path

from throughput import common as c


def build_dataset(spec: dict):
    """Conversational rows. `assistant_only`: whole conversations, loss on every assistant turn
    through the chat template's {% generation %} markers; `completion`: prompt-completion, loss
    on the last turn (TRL's completion also holds the newline its template writes after it)."""
    from datasets import Dataset

    rows = c.read_messages(Path(spec["train_file"]))
    if spec["data_format"] == "assistant_only":
        return Dataset.from_list([{"messages": m} for m in rows])
    return Dataset.from_list([{"prompt": m[:-1], "completion": [m[-1]]} for m in rows])


def sft_config(spec: dict, steps: int | None):
    from trl import SFTConfig

    t, method = spec["trl"], spec["method"]
    packed = bool(t["packing"])
    batch, accum = c.trl_batching(t["accum"], packed, spec["max_length"], spec["mean_row_tokens"])
    extra = {"max_steps": steps} if steps else {"num_train_epochs": 1}
    if t.get("group_by_length") and not packed:
        extra["train_sampling_strategy"] = "group_by_length"
    return SFTConfig(
        output_dir=spec["run_dir"], per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, learning_rate=c.LR[method], weight_decay=0.0,
        lr_scheduler_type="cosine",  # replaced in `bench_trainer` by sftlab's own schedule
        warmup_steps=c.WARMUP_RATIO,  # transformers 5: a float < 1 is a ratio
        max_grad_norm=c.MAX_GRAD_NORM, seed=spec["seed"], data_seed=spec["seed"],
        bf16=t["bf16"], fp16=False, use_cpu=True,  # bf16 autocast on CPU needs use_cpu=True
        packing=packed, packing_strategy=t["packing"] or "bfd", padding_free=t["padding_free"],
        # unpacked padding-free refuses a max_length it cannot enforce; the rows already fit it
        max_length=None if t["padding_free"] and not packed else spec["max_length"],
        assistant_only_loss=spec["data_format"] == "assistant_only",
        completion_only_loss=spec["data_format"] == "completion" or None,
        activation_checkpointing=False,  # SFTConfig's default is on; recomputation only costs on CPU
        use_liger_kernel=bool(t.get("liger")),
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, **extra,
    )  # fmt: skip


def bench_trainer(trainer_class):
    """`trainer_class` with sftlab's learning-rate schedule and a per-step record (wall seconds,
    tokens and supervised tokens of each optimizer step, as sftlab's metrics.jsonl has)."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self, trainer):
            self.trainer, self.started = trainer, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            t = self.trainer
            t.step_seconds.append(time.perf_counter() - self.started)
            t.step_tokens.append(t.pending[0])
            t.step_supervised.append(t.pending[1])
            t.pending = [0, 0]

    class Trainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_seconds, self.step_tokens, self.step_supervised = [], [], []
            self.pending = [0, 0]  # tokens, supervised tokens of the step's micro-batches so far
            self.add_callback(StepClock(self))

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")  # absent when padding-free: no padding at all
            self.pending[0] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self.pending[1] += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, *args, **kwargs)

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                warmup = c.warmup_steps(num_training_steps)

                def factor(step: int) -> float:
                    return c.lr_factor(step, num_training_steps, warmup)

                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    return Trainer


def make_trainer(spec: dict, steps: int | None = None):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTTrainer

    t, method = spec["trl"], spec["method"]
    set_seed(spec["seed"])  # the LoRA weights are initialised inside SFTTrainer.__init__
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    if spec.get("chat_template"):  # SmolLM2's with {% generation %} markers, or Gemma's turns
        tokenizer.chat_template = spec["chat_template"]
    dtype = torch.bfloat16 if t["base_dtype"] == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_path"], dtype=dtype, attn_implementation=t["attn"]
    )
    lora = LoraConfig(r=c.LORA_R, lora_alpha=c.LORA_ALPHA, lora_dropout=c.LORA_DROPOUT,
                      target_modules="all-linear", task_type="CAUSAL_LM",
                      trainable_token_indices=spec.get("token_rows") or None)  # fmt: skip
    return bench_trainer(SFTTrainer)(
        model=model, args=sft_config(spec, steps), train_dataset=build_dataset(spec),
        processing_class=tokenizer, peft_config=lora if method == "lora" else None,
    )  # fmt: skip


def settings(trainer, spec: dict) -> dict:
    args = trainer.args
    return {**spec["trl"], "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "padding_free_effective": bool(trainer.padding_free),
            "optim": getattr(args.optim, "value", str(args.optim)),
            "data_format": spec["data_format"]}  # fmt: skip


def run(spec: dict) -> dict:
    """A whole epoch (weights saved for the eval child), or with `probe` {warmup, measure} only
    that many steps, timed per step after the warm-up (the sweep)."""
    probe = spec.get("probe")
    trainer = make_trainer(spec, probe and probe["warmup"] + probe["measure"])
    dataset = trainer.train_dataset
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    memory = c.peak_rss_mb()
    out = {
        "step_seconds": [round(x, 3) for x in trainer.step_seconds],
        "step_tokens": trainer.step_tokens, "step_supervised_tokens": trainer.step_supervised,
        "steps": trainer.state.global_step, "memory": memory, "settings": settings(trainer, spec),
        "dataset_tokens": tokens,
    }  # fmt: skip
    if probe:  # the measured steps only
        skip = probe["warmup"]
        out["train_seconds"] = sum(trainer.step_seconds[skip:])
        out["tokens"] = sum(trainer.step_tokens[skip:])
        out["supervised_tokens"] = sum(trainer.step_supervised[skip:])
        return out
    out.update(train_seconds=round(seconds, 2), tokens=sum(trainer.step_tokens),
               supervised_tokens=sum(trainer.step_supervised),
               supervised_tokens_per_s_after_first_step=c.after_first_step(
                   trainer.step_seconds, trainer.step_supervised))  # fmt: skip
    weights = Path(spec["run_dir"]) / ("adapter" if spec["method"] == "lora" else "model")
    trainer.model.save_pretrained(str(weights))
    out["weights"] = str(weights)
    return out


if __name__ == "__main__":
    c.child_main(run)
