"""Tokenizer and chat template of a model, from its GGUF metadata or a Hugging Face folder.

The byte-level BPE is built with Hugging Face `tokenizers` from the GGUF vocabulary and merges,
with the pre-tokenizer llama.cpp uses for the file's `tokenizer.ggml.pre`; control tokens
(`token_type` 3, e.g. `<|im_start|>`) are special tokens, so they are matched whole in text and
dropped when decoding. Chat templates are rendered in jinja2's sandbox (templates come with
downloaded files).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

_CONTROL = 3  # GGUF token_type of control tokens
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by `tokenizer.ggml.pre`
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3),
    "llama3": lambda: _split_then_bytes(_LLAMA3),
    "qwen2": lambda: _split_then_bytes(_QWEN2),
}
# end-of-turn tokens that stop generation when the vocabulary has them as control tokens
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>")
# used only when a model ships no template (dummy weights): ChatML, as SmolLM2 and Qwen use
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


class Tokenizer:
    """Text ↔ token ids and chat prompts for one model."""

    def __init__(
        self,
        backend: HFTokenizer,
        eos_token_id: int,
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        stop_token_ids: Iterable[int] = (),
        add_bos: bool = False,
    ) -> None:
        self.backend = backend
        self.add_bos = add_bos  # whether the model expects BOS before plain (non-chat) text
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.stop_token_ids = tuple(dict.fromkeys([eos_token_id, *stop_token_ids]))
        self._template = _compile(chat_template or _CHATML)

    # ---- constructors --------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader) -> Tokenizer:
        """From GGUF `tokenizer.ggml.*` metadata (byte-level BPE, `tokenizer.ggml.model` gpt2)."""

        def field(key: str, default=None):
            value = reader.fields.get(key)
            return default if value is None else value.contents()

        kind = field("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"GGUF tokenizer {kind!r} is not supported (only byte-level BPE, gpt2)"
            )
        pre = field("tokenizer.ggml.pre", "default")
        if pre not in _PRE_TOKENIZERS:
            raise ValueError(
                f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(_PRE_TOKENIZERS)}"
            )
        tokens: list[str] = field("tokenizer.ggml.tokens")
        types: list[int] = field("tokenizer.ggml.token_type", [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
        # llama.cpp looks a whole pre-token up in the vocabulary first only for Llama 3
        ignore_merges = pre in ("llama-bpe", "llama3")
        vocab = {t: i for i, t in enumerate(tokens)}
        backend = HFTokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
        backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        control = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        eos = field("tokenizer.ggml.eos_token_id")
        if eos is None:
            raise ValueError("GGUF metadata lacks tokenizer.ggml.eos_token_id")
        stops = [field("tokenizer.ggml.eot_token_id"), field("tokenizer.ggml.eom_token_id")]
        stops += [tokens.index(t) for t in _END_OF_TURN if t in control]
        return cls(
            backend,
            eos_token_id=int(eos),
            bos_token_id=field("tokenizer.ggml.bos_token_id"),
            # llama.cpp's default for byte-level BPE vocabularies is no BOS
            add_bos=bool(field("tokenizer.ggml.add_bos_token", False)),
            chat_template=field("tokenizer.chat_template"),
            stop_token_ids=[int(s) for s in stops if s is not None],
        )

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        """From a Hugging Face folder's tokenizer.json (+ tokenizer_config.json)."""
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{folder} has no tokenizer.json")
        backend = HFTokenizer.from_file(str(path))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}

        def token_id(key: str) -> int | None:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else backend.token_to_id(token)

        eos = token_id("eos_token")
        if eos is None:
            raise ValueError(f"{config_path} names no eos_token in the vocabulary")
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        stops = [backend.token_to_id(t) for t in _END_OF_TURN if t in specials]
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():  # where transformers 5 saves it
            template = (folder / "chat_template.jinja").read_text()
        bos = token_id("bos_token")
        add_bos = bool(config.get("add_bos_token", False)) or _post_processor_adds(backend, bos)
        return cls(backend, eos, bos, template, stops, add_bos=add_bos)

    @classmethod
    def bytes_only(cls) -> Tokenizer:
        """One token per byte plus ChatML's three control tokens: for dummy-weight models,
        whose output is noise but must still flow through the engine."""
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        backend = HFTokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
        return cls(backend, eos_token_id=backend.token_to_id("<|im_end|>"))

    # ---- text ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it (`<|im_start|>`) map to their ids.
        `add_special_tokens` prepends BOS if the model expects one (`add_bos`; SmolLM2 does
        not); chat templates write their own markers."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text for a chat. OpenAI-style content lists are joined into their text."""
        flat = [{**m, "content": _text_of(m.get("content"))} for m in messages]
        bos = self.backend.id_to_token(self.bos_token_id) if self.bos_token_id is not None else ""
        try:
            return self._template.render(
                messages=flat,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos,
                eos_token=self.backend.id_to_token(self.eos_token_id),
                **extra,
            )
        except Exception as error:  # a template's own raise_exception or a bad message shape
            raise ValueError(f"chat template failed: {error}") from None


def _post_processor_adds(backend: HFTokenizer, bos: int | None) -> bool:
    """Whether a tokenizer.json's post-processor puts BOS first (as Llama 3's does)."""
    if bos is None:
        return False
    return backend.encode("a", add_special_tokens=True).ids[:1] == [bos]


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError(f"message content must be a string or a list of parts, got {content!r}")


def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    return env.from_string(template)


class IncrementalDetokenizer:
    """Turns generated ids into text as they arrive, for streaming: emits only complete
    characters (a multi-byte character split over tokens waits for its last byte), and with stop
    strings holds back any tail that could begin one, so nothing after a stop is ever emitted."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._ids = list(prompt_ids[-5:])  # a little context so decoding starts cleanly
        self._prefix = 0
        self._read = len(self._ids)
        self._held = ""
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that may be emitted now."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(after[len(before) :])

    def finish(self) -> str:
        """Flush everything not yet emitted (generation ended otherwise): text waiting for more
        bytes (or ending in a literal U+FFFD), and text held back for a possible stop string."""
        if self.stopped:
            return ""
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        rest = decode(self._ids[self._prefix :])[len(before) :]
        self._prefix = self._read = len(self._ids)
        out = self._release(rest)
        if not self.stopped:
            held, self._held = self._held, ""
            self.text += held
            out += held
        return out

    def _release(self, delta: str) -> str:
        buffer = self._held + delta
        found = [i for i in (buffer.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped = True
            out, self._held = buffer[: min(found)], ""
        else:
            keep = _longest_stop_prefix(buffer, self.stop)
            out, self._held = buffer[: len(buffer) - keep], buffer[len(buffer) - keep :]
        self.text += out
        return out


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
