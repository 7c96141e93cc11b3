"""Token rows (model/token_rows.py): which template tokens a base model has not learned, and their
embedding rows trained beside LoRA on the input embedding and the output layer.

Tiny models built in code: the byte-level Llama of conftest (tied), an untied one, and a tiny
Gemma 3 (scaled embedding, soft-capped logits: the unfused head path). Expected values come from
a plain model with the rows written into its weights, never from the code under test.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.config import TemplateConfig, TrainConfig
from sftlab.core.errors import ConfigError
from sftlab.core.types import IGNORE_INDEX, Conversation, Message, TokenizedExample
from sftlab.model.lora import add_lora
from sftlab.model.loss import SupervisedLoss
from sftlab.model.token_rows import (
    check_untrained_tokens,
    control_token_ids,
    select_token_rows,
    use_fast_token_rows,
)
from sftlab.pack.collate import collate
from sftlab.pack.packing import make_row
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer

START, END = 257, 258  # <|im_start|>, <|im_end|> of the byte tokenizer
ROWS = [START, END]


def untied_tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=END, pad_token_id=END,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        sliding_window=16, final_logit_softcapping=5.0, bos_token_id=None, eos_token_id=END,
        pad_token_id=END,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config)
    model.config._attn_implementation = "eager"
    return model


MODELS = {"tied": make_tiny_model, "untied": untied_tiny_model, "gemma3": tiny_gemma3}


def example(rng, n: int, prompt: int) -> TokenizedExample:
    """<|im_start|> + random bytes + <|im_end|>, a few bytes further in, supervised after `prompt`:
    both trained tokens occur as inputs and the end marker as a target."""
    ids = rng.integers(0, 256, size=n).astype(np.int32)
    ids[0], ids[n // 2], ids[-1] = START, END, END
    labels = ids.copy()
    labels[:prompt] = IGNORE_INDEX
    return TokenizedExample(ids, labels)


def batch():
    rng = np.random.default_rng(0)
    rows = [make_row([example(rng, 13, 4), example(rng, 9, 2)]), make_row([example(rng, 19, 6)])]
    return collate(rows, pad_id=END)


def peft_with_moved_rows(kind: str):
    """(plain base copy, peft model) with the trained rows moved off the base's values, so that a
    loss through the original rows would differ."""
    base = MODELS[kind]()
    plain = copy.deepcopy(base)
    model = add_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear", token_rows=ROWS)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return plain, model


def materialise(plain, model) -> None:
    """Write the peft model's trained rows into the plain model's weights (input and head)."""
    ids = torch.tensor(ROWS)
    layers = {
        "embed_tokens": plain.get_input_embeddings(),
        "lm_head": plain.get_output_embeddings(),
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                target = next(layer for key, layer in layers.items() if key in name)
                target.weight[ids] = p


def reference_loss(model, b) -> torch.Tensor:
    logits = model(b.input_ids, position_ids=b.position_ids, use_cache=False).logits.float()
    keep = b.targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep], b.targets[keep], reduction="sum")


@pytest.mark.parametrize("kind", list(MODELS))
def test_loss_and_row_gradients_equal_a_model_with_the_rows_written_in(kind):
    plain, model = peft_with_moved_rows(kind)
    materialise(plain, model)
    b = batch()
    wrapped = SupervisedLoss(model, chunk_tokens=7)
    assert wrapped.fused == (kind != "gemma3")  # the fused head and the soft-capped one
    got = wrapped(b.input_ids, b.position_ids, b.targets)
    got.backward()
    rows = {n: p for n, p in model.named_parameters() if "trainable_tokens_delta" in n}
    assert len(rows) == (2 if kind == "untied" else 1)  # an untied head trains its own rows

    # <|im_end|> is also the padding id: nn.Embedding's padding_idx zeroes that row's input-side
    # gradient (its forward, what a merged model computes, is the same). The trained rows take
    # their input-side gradient on purpose: the end-of-turn token is an input after every turn.
    plain.get_input_embeddings().padding_idx = None
    embed, head = plain.get_input_embeddings().weight, plain.get_output_embeddings().weight
    for weight in {id(embed): embed, id(head): head}.values():
        weight.requires_grad_(True)
    want = reference_loss(plain, b)
    want.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    for name, p in rows.items():
        weight = head if "lm_head" in name else embed  # tied: one tensor, both sides' gradient
        torch.testing.assert_close(p.grad, weight.grad[ROWS], rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the model's own forward (generation, evaluation) too
        torch.testing.assert_close(
            model(input_ids=b.input_ids).logits, plain(input_ids=b.input_ids).logits
        )


def test_the_fast_rows_give_peft_own_forward_and_merge():
    _, model = peft_with_moved_rows("gemma3")
    x = batch().input_ids
    with torch.no_grad():
        fast = model(input_ids=x).logits
        from peft.tuners.trainable_tokens import TrainableTokensLayer

        for layer in model.modules():
            if type(layer) is TrainableTokensLayer:
                del layer.forward  # back to peft's own forward
        peft_own = model(input_ids=x).logits
        merged = model.merge_and_unload()(input_ids=x).logits
    torch.testing.assert_close(fast, peft_own)
    torch.testing.assert_close(fast, merged)


# -- the pre-flight check ----------------------------------------------------------------------


def rendered_rows(tokenizer) -> list[list[int]]:
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    pairs = [("What is two plus two?", "Four."), ("Name a fruit.", "A pear."), ("Hi?", "Hello!")]
    convs = [Conversation((Message("user", q), Message("assistant", a))) for q, a in pairs]
    return [renderer.encode(c).input_ids.tolist() for c in convs]


def trained_like(kind: str = "tied"):
    """A tiny model whose every row looks initialised: conftest's model has a zero row for its
    padding token (<|im_end|>), which the check would rightly flag."""
    model = MODELS[kind]()
    with torch.no_grad():
        model.get_input_embeddings().weight[END].normal_(0, 0.02)
    return model


def test_a_row_at_the_mean_embedding_is_flagged_and_no_ordinary_token():
    tokenizer = make_tiny_tokenizer()
    rows = rendered_rows(tokenizer)
    control = control_token_ids(tokenizer, END)
    model = trained_like()
    assert check_untrained_tokens(model, rows, control, tokenizer)["flagged"] == []
    with torch.no_grad():  # <|im_start|> as a never-trained (mean-initialised) row
        weight = model.get_input_embeddings().weight
        weight[START] = weight.mean(dim=0)
    report = check_untrained_tokens(model, rows, control, tokenizer)
    assert report["flagged"] == [START]
    entry = next(t for t in report["tokens"] if t["id"] == START)
    assert entry["control"] and "mean embedding" in entry["why"]
    assert {t["id"] for t in report["tokens"]} == {START, END}  # control tokens, listed


def test_an_end_of_turn_the_model_never_predicts_is_flagged():
    """The behaviour signal: <|im_end|>'s logit pushed far below every other where the template
    puts it (the untied head's row points against the model's final hidden states)."""
    tokenizer = make_tiny_tokenizer()
    rows = rendered_rows(tokenizer)
    control = control_token_ids(tokenizer, END)
    model = trained_like("untied")
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([rows[0]])).last_hidden_state[0]
        direction = hidden.mean(dim=0)
        model.lm_head.weight[END] = -40 * direction / direction.norm() ** 2
    report = check_untrained_tokens(model, rows, control, tokenizer)
    assert report["flagged"] == [END]
    entry = next(t for t in report["tokens"] if t["id"] == END)
    assert entry["probability"] < 0.01 * report["text_probability"] and "p=" in entry["why"]


def test_token_rows_setting():
    assert select_token_rows("auto", [106, 105], [300], 400) == [105, 106, 300]
    assert select_token_rows("none", [105], [300], 400) == []
    assert select_token_rows([7, 3, 7], [105], [], 400) == [3, 7]
    with pytest.raises(ConfigError, match=r"train.token_rows: id\(s\) \[400\]"):
        select_token_rows([5, 400], [], [], 400)
    assert TrainConfig().token_rows == "auto"
    for bad in ("some", [1, -2], [True]):
        with pytest.raises(ValueError, match="auto, none or a list of token ids"):
            TrainConfig(token_rows=bad)


# -- a whole run: saved, reloaded, merged, resumed ---------------------------------------------


def model_dir(tmp_path, kind: str):
    folder = tmp_path / f"model-{kind}"
    MODELS[kind]().save_pretrained(folder, safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_run_trains_exactly_the_rows_and_reloads_and_merges_them(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    from sftlab.export.artifacts import load_run
    from sftlab.recipes.sft import train
    from test_recipe_smoke import tiny_config

    base = model_dir(tmp_path, kind)
    run = train(tiny_config(tmp_path, base, f"train.token_rows={ROWS}", "export.merged=true"))
    report = json.loads((run / "mask_report.json").read_text())["untrained_tokens"]
    assert report["trained_rows"] == ROWS and report["rows_checked"] > 0
    assert json.loads((run / "manifest.json").read_text())["trained_token_rows"] == ROWS

    before, after = (
        load_file(base / "model.safetensors"),
        load_file(run / "merged" / "model.safetensors"),
    )
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key not in before:  # tied: the head is the embedding
            assert kind == "tied" and key not in after
            continue
        changed = (before[key] != after[key]).any(dim=1).nonzero().flatten().tolist()
        assert changed == ROWS, key  # those rows, input and output side, and nothing else

    x = torch.tensor([rendered_rows(make_tiny_tokenizer())[0]])
    with torch.no_grad():
        unmerged = load_run(run, merged=False).model
        use_fast_token_rows(unmerged)  # the training forward
        want = unmerged(input_ids=x).logits
        reloaded = load_run(run).model(input_ids=x).logits
        plain = AutoModelForCausalLM.from_pretrained(run / "merged")(input_ids=x).logits
    torch.testing.assert_close(reloaded, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-5)


def test_markers_added_to_the_vocabulary_are_trained_and_merged(tmp_path):
    """Gemma's turn format on the byte tokenizer: its two markers become new tokens whose rows
    start at the mean row (model/vocab.py); auto trains exactly those rows."""
    from sftlab.recipes.sft import train
    from test_recipe_smoke import tiny_config

    base = model_dir(tmp_path, "tied")
    run = train(tiny_config(tmp_path, base, "template.chat_template=gemma", "export.merged=true"))
    added = json.loads((run / "chat_format.json").read_text())["added_token_ids"]
    report = json.loads((run / "mask_report.json").read_text())["untrained_tokens"]
    assert len(added) == 2 and report["trained_rows"] == report["flagged"] == added
    before = load_file(base / "model.safetensors")["model.embed_tokens.weight"]
    after = load_file(run / "merged" / "model.safetensors")["model.embed_tokens.weight"]
    assert len(after) == max(added) + 1
    assert torch.equal(after[: min(added)], before[: min(added)])  # the old rows, untouched
    mean = before[: min(added)].mean(dim=0)
    assert all(not torch.allclose(after[i], mean) for i in added)  # trained off the mean


def test_resume_restores_the_rows_bitwise(tmp_path):
    from sftlab.recipes.sft import train
    from test_recipe_smoke import tiny_config

    base = model_dir(tmp_path, "tied")
    overrides = (f"train.token_rows={ROWS}", "train.save_every=2", "train.keep_last=5")
    run = train(tiny_config(tmp_path, base, *overrides))
    step2 = load_file(run / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert any("trainable_tokens_delta" in k for k in step2)
    uninterrupted = load_file(run / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(run / "checkpoints" / "step-000004")  # as if killed after step 2's checkpoint
    shutil.rmtree(run / "adapter")
    train(tiny_config(tmp_path, base, *overrides, "train.resume=true"))
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert any("trainable_tokens_delta" in k for k in resumed)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


# -- real models -------------------------------------------------------------------------------

QA = [
    ("What is the capital of France?", "Paris."),
    ("Convert 3 kilometres to metres.", "3 kilometres are 3,000 metres."),
    ("Sort these numbers: 9, 2, 5.", "2, 5, 9"),
    ("Is a whale a fish or a mammal?", "A mammal."),
]


@pytest.mark.real
def test_gemma_base_turn_markers_are_flagged_and_no_ordinary_token():
    """Rendered by sftlab's own template choice for a model without one (Gemma's turn format),
    checked and chosen as `sftlab train` does (train.token_rows: auto)."""
    from transformers import AutoModelForCausalLM

    from sftlab.model.load import load_tokenizer, resolve_model
    from sftlab.model.token_rows import plan_token_rows

    ref = resolve_model("gemma3-270m")
    tokenizer = load_tokenizer(ref)
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    examples = [renderer.encode(Conversation((Message("user", q), Message("assistant", a))))
                for q, a in QA]  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    said = []
    rows, report = plan_token_rows(model, "auto", renderer, examples, said.append)
    assert rows == report["flagged"] == [105, 106]  # every other token of the rows is not
    assert all("p=" in t["why"] for t in report["tokens"] if t["flagged"])
    assert "<end_of_turn> (106)" in said[0] and "training their rows" in said[0]


@pytest.mark.real
def test_an_instruct_model_has_nothing_untrained(smol_path, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32)
    renderer = Renderer(smol_tokenizer, build_chat_format(smol_tokenizer, TemplateConfig()))
    convs = [Conversation((Message("user", q), Message("assistant", a))) for q, a in QA]
    rows = [renderer.encode(c).input_ids.tolist() for c in convs]
    control = control_token_ids(smol_tokenizer, renderer.fmt.end_of_turn_id)
    report = check_untrained_tokens(model, rows, control, smol_tokenizer)
    assert report["flagged"] == [] and {t["token"] for t in report["tokens"]} >= {"<|im_end|>"}
