"""The TRL side of bench/train_throughput.py, with the real SmolLM2 tokenizer and model:
the TRL child never loads sftlab, and on multi-turn rows TRL (SmolLM2's template with
{% generation %} markers, assistant_only_loss) trains the same token ids at the same supervised
positions as sftlab."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from throughput import common  # noqa: E402

pytest.importorskip("trl")
pytestmark = pytest.mark.real

ROWS = [
    [{"role": "user", "content": "Name a primary colour."},
     {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "And another one?"},
     {"role": "assistant", "content": "Blue is another primary colour."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "2 + 3 = 5"},
     {"role": "user", "content": "Double it."},
     {"role": "assistant", "content": "10"},
     {"role": "user", "content": "Say it in French, with an accent: café?"},
     {"role": "assistant", "content": "Dix. Et oui, « café » porte un accent aigu."}],
]  # fmt: skip

# Runs in a fresh interpreter, as the benchmark runs the TRL child: builds the child's trainer
# (unpacked, so each row stays one sequence), collates each row, and reports what TRL trains.
PROBE = """
import json, sys
from throughput import trl_child
spec = json.load(open(sys.argv[1]))
trainer = trl_child.make_trainer(spec, steps=1)
rows = []
for i in range(len(trainer.train_dataset)):
    batch = trainer.data_collator([trainer.train_dataset[i]])
    rows.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
print(json.dumps({"rows": rows, "sftlab_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "sftlab")}))
"""


@pytest.fixture(scope="module")
def trl_view(tmp_path_factory):
    from throughput.prepare_child import renderer_for, trl_side

    work = tmp_path_factory.mktemp("trl-child")
    common.write_messages(work / "train.jsonl", ROWS)
    renderer = renderer_for("default", 512)
    from sftlab.model.load import resolve_model

    cfg = {"accum": 1, "packing": None, "padding_free": False, "bf16": False, "base_dtype": "fp32",
           "attn": "sdpa", "group_by_length": False, "liger": False}  # fmt: skip
    spec = {"run_dir": str(work / "run"), "method": "lora", "seed": 0, "trl": cfg,
            "model_path": resolve_model("default").path, **trl_side(renderer), "max_length": 512,
            "token_rows": [], "train_file": str(work / "train.jsonl"), "mean_row_tokens": 2048.0}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    env = common.child_env() | {"PYTHONPATH": str(BENCH)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(work / "spec.json")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), renderer


def test_trl_child_never_imports_sftlab(trl_view):
    view, _ = trl_view
    assert view["sftlab_loaded"] == []


def test_trl_supervises_every_assistant_turn_exactly_as_sftlab(trl_view):
    from throughput.prepare_child import to_conversation

    view, renderer = trl_view
    tokenizer = renderer.tokenizer
    for msgs, trl_row in zip(ROWS, view["rows"], strict=True):
        example = renderer.encode(to_conversation(msgs))
        assert trl_row["input_ids"] == example.input_ids.tolist()
        assert trl_row["labels"] == example.labels.tolist()
        # and what both supervise is each answer and its <|im_end|>, nothing else
        labels = trl_row["labels"]
        spans, current = [], []
        for token, label in zip(trl_row["input_ids"], labels, strict=True):
            if label != -100:
                current.append(token)
            elif current:
                spans.append(tokenizer.decode(current))
                current = []
        spans += [tokenizer.decode(current)] if current else []
        answers = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
        assert spans == answers
