"""The data sets, written once per invocation: `python -m throughput.prepare_child SPEC.json`.

sftlab side (imports sftlab): builds each data set's conversations, splits off the held-out
rows, writes train/eval JSONL (OpenAI messages), counts tokens with sftlab's Renderer, scores the
base model, and hands the TRL child what it must not compute itself (the model's folder, the
chat template it trains with, the token rows)."""

from __future__ import annotations

import random
from pathlib import Path

from throughput import common as c

# SmolLM2's template writes every message the same way; TRL's assistant_only_loss needs the
# assistant's part between {% generation %} markers. The marked part is what sftlab supervises:
# the content and <|im_end|>, not the newline after it. The rendered text does not change.
_SMOL_MESSAGE = (
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
)
_SMOL_MARKED = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}" + _SMOL_MESSAGE + "{% endif %}"
)


def generation_template(template: str) -> str:
    """SmolLM2's chat template with {% generation %} around each assistant answer."""
    if template.count(_SMOL_MESSAGE) != 1:
        raise ValueError(
            "bench/throughput/prepare_child.py: the model's chat template is not SmolLM2's; "
            "write its {% generation %} markers for TRL's assistant_only_loss by hand"
        )
    return template.replace(_SMOL_MESSAGE, _SMOL_MARKED)


def to_conversation(msgs: list[dict]):
    from sftlab.core.types import Conversation, Message

    return Conversation(tuple(Message(m["role"], m["content"]) for m in msgs))


def to_messages(conv) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in conv.messages]


def load_convs(path: Path) -> list:
    from sftlab.config import SourceConfig
    from sftlab.data.mixture import load_source

    return list(load_source(SourceConfig(path=str(path))).conversations)


def generated(work: Path) -> list:
    """The demo's own data, written the way `sftlab demo` writes it (identity + general, 1:1)."""
    from sftlab.recipes import demo

    identity, general, _ = demo.write_data(work / "demo-data")
    return load_convs(identity) + load_convs(general)


def instruct(work: Path) -> list:
    """The instruct demo's training rows (`sftlab demo --kind instruct`): Gemma's set."""
    from sftlab.recipes.instruct_data import write_instruction_set

    train_file, _ = write_instruction_set(work / "instruct-data")
    return load_convs(train_file)


def alpaca() -> list:
    if not c.ALPACA.is_file():
        raise FileNotFoundError(
            f"{c.ALPACA} not found: the Alpaca-based data sets (alpaca, multiturn, longrow) need "
            "the shared Alpaca sample in ../shared/data next to the repository; run without "
            "them with --cases generated,generated_full,gemma"
        )
    return load_convs(c.ALPACA)


def multiturn(seed: int = c.SEED) -> list:
    """Alpaca exchanges chained into conversations of 2-4 user/assistant exchanges (4-8
    messages; a third of those under 4 exchanges open with a system message): every assistant
    turn is supervised. Deterministic: a seeded shuffle, consumed in order."""
    from sftlab.core.types import Conversation, Message

    rows = alpaca()
    rng = random.Random(f"{seed}/bench/multiturn")
    rng.shuffle(rows)
    out, i = [], 0
    while i + 4 <= len(rows):
        k = rng.randint(2, 4)
        msgs = [m for conv in rows[i : i + k] for m in conv.messages]
        if k < 4 and rng.random() < 1 / 3:
            msgs = [Message("system", "You are a helpful assistant."), *msgs]
        out.append(Conversation(tuple(msgs)))
        i += k
    return out


def longrows(seed: int = c.SEED, min_chars: int = 5200) -> list:
    """One user message asking several Alpaca instructions at once (numbered) and one long
    answer with the numbered outputs; rows are grown to ~1.3-1.5k tokens (~4 chars/token), and
    split_dataset keeps the ones of 1,024-2,048 tokens."""
    from sftlab.core.types import Conversation, Message

    rows = alpaca()
    rng = random.Random(f"{seed}/bench/longrow")
    rng.shuffle(rows)
    out, asks, answers, size = [], [], [], 0
    for conv in rows:
        user, answer = conv.messages[-2].content, conv.messages[-1].content
        asks.append(f"{len(asks) + 1}. {user}")
        answers.append(f"{len(answers) + 1}. {answer}")
        size += len(user) + len(answer)
        if size >= min_chars:
            prompt = "Answer each of the following.\n\n" + "\n\n".join(asks)
            out.append(
                Conversation((Message("user", prompt), Message("assistant", "\n\n".join(answers))))
            )
            asks, answers, size = [], [], 0
    return out


def usable(conv, example, kind: str, max_length: int) -> bool:
    """Both systems train it identically and untruncated: single-turn sets need exactly one
    assistant turn, last; the multi-turn set at least two; the long-row set 1,024+ tokens."""
    roles = [m.role for m in conv.messages]
    answers = roles.count("assistant")
    if roles[-1] != "assistant" or example.n_supervised == 0 or len(example) > max_length:
        return False
    if kind == "multiturn":
        return answers >= 2
    if kind == "longrow":
        return answers == 1 and len(example) >= 1024
    return answers == 1


def split_dataset(kind: str, convs, renderer, max_length: int, rows, target_tokens) -> dict:
    """Seeded held-out split (the same for every case on one source), then the training rows:
    `rows` of them, or enough to reach `target_tokens` tokens, or all."""
    encoded = [(conv, renderer.encode(conv)) for conv in convs]
    kept = [(conv, e) for conv, e in encoded if usable(conv, e, kind, max_length)]
    random.Random(f"{c.SEED}/bench/{kind}").shuffle(kept)
    n_eval, eval_tokens = 0, 0  # EVAL_ROWS rows, fewer of long ones: every eval pass costs
    while n_eval < min(c.EVAL_ROWS, len(kept)) and eval_tokens < c.EVAL_TOKENS:
        eval_tokens += len(kept[n_eval][1])
        n_eval += 1
    heldout, pool = kept[:n_eval], kept[n_eval:]
    train, tokens = [], 0
    for conv, example in pool:
        if (rows is not None and len(train) >= rows) or (target_tokens and tokens >= target_tokens):
            break
        train.append((conv, example))
        tokens += len(example)
    return {
        "train": train,
        "eval": heldout,
        "dropped": len(convs) - len(kept),
        "available": len(pool),
    }


def renderer_for(model: str, max_length: int):
    """sftlab's Renderer for the template training uses (`auto`: the model's own, or for a model
    without one its family's library format), system_prompt unset."""
    from sftlab.config import TemplateConfig
    from sftlab.model.load import load_tokenizer, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    tokenizer = load_tokenizer(resolve_model(model))
    config = TemplateConfig(max_length=max_length, chat_template="auto")
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


def trl_side(renderer) -> dict:
    """How TRL gets the same rows: SmolLM2's own template with generation markers and
    assistant_only_loss; a template-less base (Gemma) gets sftlab's turn format as its chat
    template and trains the completion (the last turn), as before the multi-turn set existed."""
    own = renderer.tokenizer.chat_template
    if getattr(renderer.fmt, "name", "model") == "model" and own:
        return {"data_format": "assistant_only", "chat_template": generation_template(own)}
    return {"data_format": "completion", "chat_template": renderer.fmt.template}


def base_loss(model: str, max_length: int, eval_file: Path, cache: dict) -> float:
    import torch

    from sftlab.eval.loss import conversation_loss
    from sftlab.model.load import load_model, resolve_model

    if model not in cache:
        cache[model] = load_model(resolve_model(model), dtype=torch.float32).eval()
    convs = [to_conversation(m) for m in c.read_messages(eval_file)]
    return conversation_loss(cache[model], renderer_for(model, max_length), convs)


def model_info(model: str) -> dict:
    import json

    from sftlab.model.load import resolve_model

    ref = resolve_model(model)
    config = json.loads((Path(ref.path) / "config.json").read_text())
    return {"name": model, "path": ref.path, "model_type": config.get("model_type")}


def write_split(folder: Path, split: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    c.write_messages(folder / "train.jsonl", [to_messages(conv) for conv, _ in split["train"]])
    c.write_messages(folder / "eval.jsonl", [to_messages(conv) for conv, _ in split["eval"]])


def prepare_one(name: str, want: dict, work: Path, sources: dict, models: dict) -> dict:
    kind, model, max_length = want["kind"], want["model"], want["max_length"]
    if kind not in sources:  # built once, shared by the cases on the same source
        build = {"generated": lambda: generated(work), "instruct": lambda: instruct(work),
                 "alpaca": alpaca, "multiturn": multiturn, "longrow": longrows}[kind]  # fmt: skip
        sources[kind] = build()
    renderer = renderer_for(model, max_length)
    split = split_dataset(kind, sources[kind], renderer, max_length, want.get("rows"),
                          want.get("target_tokens"))  # fmt: skip
    folder = work / "data" / name
    write_split(folder, split)
    train = [e for _, e in split["train"]]
    return {
        **want, **trl_side(renderer), "model_path": model_info(model)["path"],
        # TRL 1.16's fused LM head reads lm_head.weight/.bias directly, and peft's wrapper for
        # trainable_token_indices has no .bias (AttributeError in the first step): neither system
        # trains the marker rows here, so both do the same work (LoRA only). Kept for the record.
        "token_rows": [], "marker_rows_not_trained": marker_rows(renderer),
        "train_file": str(folder / "train.jsonl"), "eval_file": str(folder / "eval.jsonl"),
        "rows_in": len(sources[kind]), "rows_unusable": split["dropped"],
        "train_rows": len(train), "train_rows_available": split["available"],
        "train_tokens": sum(len(e) for e in train),
        "train_supervised_tokens": sum(e.n_supervised for e in train),
        "mean_row_tokens": sum(len(e) for e in train) / max(len(train), 1),
        "assistant_turns_per_row": sum(
            sum(m.role == "assistant" for m in conv.messages) for conv, _ in split["train"]
        ) / max(len(train), 1),
        "eval_rows": len(split["eval"]),
        "eval_supervised_tokens": sum(e.n_supervised for _, e in split["eval"]),
        "eval_loss_base": base_loss(model, max_length, folder / "eval.jsonl", models),
    }  # fmt: skip


def parameters(models: dict) -> dict:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def run(spec: dict) -> dict:
    work = Path(spec["workdir"])
    sources, models, out = {}, {}, {}
    for name, want in spec["datasets"].items():
        out[name] = prepare_one(name, want, work, sources, models)
        print(f"prepared {name}: {out[name]['train_rows']} rows", flush=True)
    return {"datasets": out, "parameters": parameters(models)}


if __name__ == "__main__":
    c.child_main(run)
