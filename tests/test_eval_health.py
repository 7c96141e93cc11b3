"""Stop and format health on hand-written generations: every rate below is counted by hand."""

from __future__ import annotations

from sftlab.eval.generate import Generation
from sftlab.eval.health import (
    example_health,
    health,
    is_echo,
    is_loop,
    leaked_markers,
    template_markers,
)

MARKERS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def gen(text: str, stopped: bool = True, n_tokens: int = 3) -> Generation:
    return Generation(text=text, token_ids=list(range(n_tokens)), stopped=stopped)


def test_loop_needs_three_copies_of_four_words():
    assert is_loop("I am a bot. I am a bot. I am a bot.")  # "i am a bot" x3
    assert not is_loop("I am a bot. I am a bot.")  # only twice
    assert not is_loop("The capital of France is Paris, a city on the Seine.")
    # the same word six times holds "the the the the" three times (positions 0, 1, 2)
    assert is_loop("the the the the the the")
    assert not is_loop("the the the the the")  # five words: only two such 4-grams
    assert is_loop("!" * 12)  # no words at all, one character 12 = 4*3 times
    assert not is_loop("!" * 11)


def test_echo_is_the_prompt_repeated_not_a_shared_word():
    assert is_echo("What is the capital of France?", "what is the capital of France? Paris.")
    assert is_echo("Hi", "Hi!")  # the whole answer is the prompt
    assert not is_echo("Hi", "Hi there, how can I help?")  # a short prompt inside is no echo
    assert not is_echo("What is the capital of France?", "The capital of France is Paris.")
    assert not is_echo("Tell me a joke", "")


def test_leaked_markers_each_once_in_marker_order():
    text = "Sure<|im_end|>\n<|im_start|>user\nmore<|im_end|>"
    assert leaked_markers(text, MARKERS) == ["<|im_start|>", "<|im_end|>"]
    assert leaked_markers("clean answer", MARKERS) == []


def test_health_rates_counted_by_hand():
    prompts = ["Say hi", "Name a colour", "Count", "Repeat after me: the sky is blue", "Go"]
    generations = [
        gen("Hi!"),  # healthy
        gen("Red<|im_end|><|im_start|>user", stopped=False),  # leak, hit the limit
        gen("one two three four " * 3, stopped=False),  # loop, hit the limit
        gen("Repeat after me: the sky is blue"),  # echo
        gen("   "),  # empty
    ]
    assert health(prompts, generations, MARKERS) == {
        "n": 5,
        "stop_rate": 3 / 5,
        "loop_rate": 1 / 5,
        "echo_rate": 1 / 5,
        "empty_rate": 1 / 5,
        "leak_rate": 1 / 5,
    }
    flags = example_health(prompts[1], generations[1], MARKERS)
    assert flags == {"stopped": False, "loop": False, "echo": False, "empty": False,
                     "leaked": ["<|im_start|>", "<|im_end|>"], "tokens": 3}  # fmt: skip


def test_health_of_nothing_is_zero_not_an_error():
    assert health([], [], MARKERS) == {
        "n": 0, "stop_rate": 0.0, "loop_rate": 0.0, "echo_rate": 0.0, "empty_rate": 0.0, "leak_rate": 0.0
    }  # fmt: skip


def test_template_markers_of_a_real_tokenizer(tiny_tokenizer):
    assert set(template_markers(tiny_tokenizer)) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
