"""`finish_reason` and `tokens` of a generation, and their place in `sftlab generate --json`.

finish_reason is "stop" when a stop token (the template's end-of-turn, or EOS) ended the answer,
"length" when the token limit did; tokens counts the answer's tokens (the stop token excluded).
Expected values come from plain transformers `model.generate` on the same prompt ids, not from
sftlab's own generate.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_model, make_tiny_tokenizer
from sftlab.eval.generate import Generation, generate, user_turn


def plain_greedy(model, prompt_ids: list[int], stop_ids: list[int], limit: int) -> list[int]:
    """Greedy decoding by hand, one token at a time: what the answer's ids must be."""
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(limit):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop_ids:
                break
            ids.append(nxt)
    return out


def test_generation_keeps_stopped_and_finish_reason_in_agreement():
    assert Generation("a", [1], True).finish_reason == "stop"
    assert Generation("a", [1, 2], False).finish_reason == "length"
    assert Generation("a", [1, 2], False).tokens == 2
    with pytest.raises(ValueError, match="finish_reason"):
        Generation("a", [1], True, "length")
    with pytest.raises(ValueError, match="finish_reason"):
        Generation("a", [1], False, "eos")


@pytest.mark.real
def test_finish_reason_on_a_real_generation():
    """The embedded SmolLM2 (instruction-tuned) answers a short question and stops; the same
    question under a 3-token limit ends by length."""
    from sftlab.config import TemplateConfig
    from sftlab.model.load import load_model, load_tokenizer, resolve_model
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    ref = resolve_model("default")
    tokenizer = load_tokenizer(ref)
    fmt = build_chat_format(tokenizer, TemplateConfig())
    renderer = Renderer(tokenizer, fmt)
    model = load_model(ref).eval()
    stop_ids = [fmt.end_of_turn_id]
    question = user_turn("What is the capital of France? Answer in one word.")

    full, cut = (generate(model, renderer, [question], stop_ids, n)[0] for n in (48, 3))
    expected = plain_greedy(model, renderer.encode_prompt(question), stop_ids, 48)
    assert expected[-1] in stop_ids and len(expected) < 48  # the reference really stopped
    assert full.finish_reason == "stop" and full.stopped
    assert full.token_ids == expected[:-1] and full.tokens == len(expected) - 1
    assert "Paris" in full.text
    assert cut.finish_reason == "length" and not cut.stopped
    assert cut.token_ids == expected[:3] and cut.tokens == 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory (tiny random Llama, one LoRA step) to generate from."""
    from sftlab.config import load_config
    from sftlab.recipes.sft import train

    folder = tmp_path_factory.mktemp("gen-json")
    make_tiny_model().save_pretrained(folder / "tiny", safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(folder / "tiny")
    rows = [{"prompt": f"Say {w}.", "completion": w} for w in ("hi", "yes", "no", "ok", "go")]
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, base={
        "output_dir": str(folder / "run"), "model": {"name": str(folder / "tiny")},
        "data": {"sources": [{"path": str(data)}], "eval_rows": 1},
        "template": {"max_length": 64}, "lora": {"r": 2, "alpha": 4},
        "train": {"max_steps": 1, "batch_tokens": 256, "grad_accum": 2},
    })  # fmt: skip
    return train(config)


def test_generate_json_reports_finish_reason_and_tokens(tiny_run):
    from sftlab.cli import app
    from sftlab.export.artifacts import load_run

    limit = 6
    result = CliRunner().invoke(
        app, ["generate", str(tiny_run), "--json", "--prompt", "Say hi.", "--prompt", "Say no.",
              "--max-new-tokens", str(limit)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    run = load_run(tiny_run)
    assert [a["prompt"] for a in answers] == ["Say hi.", "Say no."]
    for answer in answers:
        prompt_ids = run.renderer.encode_prompt(user_turn(answer["prompt"]))
        expected = plain_greedy(run.model.eval(), prompt_ids, run.stop_ids, limit)
        ended_on_stop = expected[-1] in run.stop_ids
        assert answer["finish_reason"] == ("stop" if ended_on_stop else "length")
        assert answer["stopped"] == ended_on_stop
        assert answer["tokens"] == len(expected) - ended_on_stop
