"""report.html and the behaviour probes of a training run, on a tiny Llama trained in the test.

The run memorises three question/answer pairs (full fine-tuning, high learning rate): before
training the random model never ends its turn; after it, every probe answer is the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CHROMIUM_ARGS, make_tiny_tokenizer
from html_parts import parse
from test_recipe_smoke import QA, lines, tiny_config

REPO = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One run, 50 steps, eval every 25; the run report's writes watched as they happen."""
    import sftlab.report.run_page as run_page
    from sftlab.recipes.sft import train

    tmp = tmp_path_factory.mktemp("report")
    seen: list[list[int]] = []  # eval steps in metrics.jsonl at each rewrite of the page
    original = run_page.write_run_report

    def watched(run_dir, pieces=None):
        seen.append([r["step"] for r in lines(Path(run_dir) / "metrics.jsonl") if "eval_loss" in r])
        return original(run_dir, pieces)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_page, "write_run_report", watched)
    try:
        run = train(tiny_config(tmp, tiny_model_dir, "train.method=full", "train.lr=1e-2",
                                "train.epochs=25", "train.max_steps=50", "train.eval_every=25",
                                "train.warmup_ratio=0"))  # fmt: skip
    finally:
        mp.undo()
    return run, seen


def test_probe_figures_join_each_eval_record(trained):
    run, _ = trained
    evals = [r for r in lines(run / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 25, 50, 50]
    # 3 eval rows (tiny_config: eval_rows=3), each probed; shares of 3 answers
    assert all(r["probe_stop_rate"] in (0, 1 / 3, 2 / 3, 1) for r in evals)
    assert evals[0]["probe_stop_rate"] == 0.0 and evals[0]["probe_task_accuracy"] == 0.0
    assert evals[-1]["probe_stop_rate"] == 1.0 and evals[-1]["probe_task_accuracy"] == 1.0
    probes = lines(run / "probes.jsonl")
    assert [p["step"] for p in probes] == [0, 25, 50]  # the final eval at step 50 is not re-run
    answers = {a["prompt"]: a for a in probes[-1]["answers"]}
    assert len(probes[-1]["answers"]) == 3
    tokenizer = make_tiny_tokenizer()
    for question, answer in QA:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        if prompt in answers:  # the prompt is the eval row cut before its answer, as templated
            assert answers[prompt]["reference"] == answer
            assert answers[prompt]["answer"] == answer and answers[prompt]["stopped"]


def test_report_is_rewritten_after_every_eval(trained):
    run, seen = trained
    # before training, after the evals at steps 25 and 50, the final eval, then with the summary
    assert seen == [[0], [0, 25], [0, 25, 50], [0, 25, 50, 50], [0, 25, 50, 50]]
    assert not (run / "report.html.tmp").exists()


def test_report_shows_curves_mask_row_and_final_eval(trained):
    run, _ = trained
    html = (run / "report.html").read_text(encoding="utf-8")
    parts = parse(html)
    chart_ids = [a["id"] for t, a in parts.tags if t == "div" and a.get("id", "").startswith("chart-")]
    assert chart_ids == ["chart-loss", "chart-lr", "chart-speed", "chart-probes"]
    assert sum(t == "svg" for t, _ in parts.tags) == 4
    # the highlighted row: exactly one assistant answer and its end-of-turn token are marked,
    # and marked plus unmarked text is the whole conversation as the chat template writes it
    marks = [m for m in parts.marks if m != "highlighted"]  # the legend's own example
    assert len(marks) == 1
    question, answer = next((q, a) for q, a in QA if marks[0] == a + "<|im_end|>")
    tokenizer = make_tiny_tokenizer()
    whole = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        tokenize=False,
    )
    row = html.split('id="mask-row"><pre>')[1].split("</pre>")[0]
    plain = row.replace('<mark class="tok" title="supervised">', "").replace("</mark>", "")
    assert plain.replace("&lt;", "<").replace("&gt;", ">") == whole
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['eval_loss_after']}" in html  # the final eval table
    assert html.count("<tr><td><pre>") == 3  # three probe answers
    assert "no (token limit)" not in html  # all three stopped at step 50


def test_report_in_a_browser_renders_charts_without_errors(trained, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    run, _ = trained
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((run / "report.html").resolve().as_uri())
        boxes = [page.locator(f"#chart-{name} svg").bounding_box()
                 for name in ("loss", "lr", "speed", "probes")]  # fmt: skip
        lines_drawn = page.locator("#chart-loss svg path").count()
        browser.close()
    assert errors == []
    assert all(r.startswith(("file:", "data:")) for r in requests), requests
    assert all(b is not None and b["width"] > 200 and b["height"] > 80 for b in boxes), boxes
    assert lines_drawn > 2  # axes, the train and the eval curve


def test_probe_prompts_skip_text_rows_and_take_the_first_answer(tiny_tokenizer):
    from sftlab.config import TemplateConfig
    from sftlab.core.types import Conversation, Message
    from sftlab.eval.probe import probe_prompts
    from sftlab.template.format import build_chat_format
    from sftlab.template.render import Renderer

    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    turns = (Message("user", "a"), Message("assistant", "b"), Message("user", "c"),
             Message("assistant", "d"))  # fmt: skip
    examples = [renderer.encode(c) for c in (
        Conversation(kind="text", text="raw text, supervised from its first token"),
        Conversation(turns),
        Conversation((Message("user", "Say hi."), Message("assistant", "Hi!"))),
    )]  # fmt: skip
    probes = probe_prompts(examples, tiny_tokenizer, [258], count=5)
    assert [p.reference for p in probes] == ["b", "Hi!"]  # the text row has no prompt
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}], add_generation_prompt=True, tokenize=False
    )
    assert probes[0].prompt_ids == tiny_tokenizer.encode(prompt, add_special_tokens=False)
    assert probe_prompts(examples, tiny_tokenizer, [258], count=1)[0].reference == "b"


def test_report_of_a_run_still_training_with_an_eval_json(tmp_path):
    from sftlab.report.run_page import write_run_report
    from test_compare import Q1, write_run

    run = write_run(tmp_path / "run", 1e-4, [2.0, 1.5], {Q1: "Two."},
                    eval_json={"tuned": {"accuracy": 0.75}, "seconds": 12})  # fmt: skip
    html = write_run_report(run).read_text(encoding="utf-8")
    assert "The run is still training" in html  # no summary.json yet
    table = html.split('id="eval-json"')[1].split("</table>")[0]
    assert "<td>tuned.accuracy</td><td class=\"num\">0.75</td>" in table
    assert "<td>seconds</td><td class=\"num\">12</td>" in table


def test_report_and_compare_of_runs_trained_without_probes(tmp_path):
    """`train.probes.prompts: 0` (or no eval split) leaves no probe figures: the pages still render,
    without the probe chart (the page's StrictUndefined once failed on the missing chart)."""
    from sftlab.recipes.compare import compare_runs
    from sftlab.report.run_page import write_run_report
    from test_compare import Q1, write_run

    runs = []
    for name, lr in (("a", 1e-4), ("b", 1e-3)):
        run = write_run(tmp_path / name, lr, [2.0, 1.5], {Q1: "Two."})
        records = [{k: v for k, v in r.items() if not k.startswith("probe_")}
                   for r in lines(run / "metrics.jsonl")]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "probes.jsonl").unlink()
        html = write_run_report(run).read_text(encoding="utf-8")
        assert 'id="chart-loss"' in html and 'id="chart-probes"' not in html
        runs.append(run)
    page = compare_runs(runs, tmp_path / "cmp").read_text(encoding="utf-8")
    assert 'id="chart-loss"' in page and 'id="chart-probes"' not in page
