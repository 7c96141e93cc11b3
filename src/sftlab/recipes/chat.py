"""`sftlab chat`: an interactive conversation with a trained run, history kept across turns."""

from __future__ import annotations

from pathlib import Path

from sftlab.core.types import Conversation, Message
from sftlab.eval.generate import generate
from sftlab.export.artifacts import load_run


def chat_loop(run_dir: Path, max_new_tokens: int, temperature: float) -> None:
    run = load_run(run_dir)
    history: list[Message] = []
    print(f"chatting with {run_dir} (empty line or Ctrl-D to quit)")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
        if not text:
            return
        history.append(Message("user", text))
        reply = generate(
            run.model, run.renderer, [Conversation(tuple(history))], run.stop_ids,
            max_new_tokens, batch_size=1, temperature=temperature,
        )[0]  # fmt: skip
        print(f"bot> {reply.text}" + ("" if reply.stopped else " [token limit]"))
        history.append(Message("assistant", reply.text))
