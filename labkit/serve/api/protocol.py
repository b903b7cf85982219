"""What a client sends and what it may send: OpenAI request bodies checked field by field, and OpenAI's error shape.

The server's whole defence against malformed or hostile input is here, before the engine sees anything: a body
that is not a JSON object, an unknown or unsupported parameter, a value of the wrong type or range, a string
that is not valid Unicode (a lone UTF-16 surrogate such as "\\ud800" is valid JSON but no text: it is refused with
400 naming the field, never replaced silently). Every refusal is an `ApiError`, which the app answers as OpenAI
does (`{"error": {"message", "type", "param", "code"}}`), rendered ASCII-only so that no client input can make
rendering the error fail. `Detokenizer` is the other direction: text as tokens stream out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from labkit.serve.sequence import SamplingParams

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


# ---------------------------------------------------------------- errors in OpenAI's shape

class ApiError(Exception):
    """An answer other than 200: HTTP status, message, the request field at fault (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 logged: bool = False):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.logged = logged  # True: its log line is written already (the engine loop's, for a request it ended)

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        """The body as bytes, ASCII-only (json's escapes): renders whatever the message quotes from the client."""
        return json.dumps(self.body()).encode("ascii")


def printable(text: str, limit: int = 300) -> str:
    """`text` safe for one log line: no newline, no lone surrogate (which a UTF-8 log stream cannot write)."""
    out = text.encode("utf-8", "backslashreplace").decode("utf-8")
    out = out.replace("\r", "\\r").replace("\n", "\\n")
    return out if len(out) <= limit else out[:limit] + "..."


# ---------------------------------------------------------------- text that is not text

def _bad_text(s: str) -> int | None:
    """Where `s` holds a lone UTF-16 surrogate (it cannot be encoded as UTF-8), or None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def check_unicode(body) -> None:
    """Refuse a parsed JSON body holding a string (or key) that is not valid Unicode, naming its path
    (`prompt`, `messages[0].content`). Iterative: a body nested as deep as json.loads allows is fine here."""
    stack = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            at = _bad_text(value)
            if at is not None:
                raise ApiError(400, f"{path or 'the body'} is not valid Unicode: it holds a lone UTF-16 surrogate "
                                    f"({ascii(value[at])} at character {at}); send text as UTF-8, or surrogates "
                                    "only in pairs", path or None)
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                name = f"{path}.{printable(key)}" if path else printable(key)
                if _bad_text(key) is not None:
                    raise ApiError(400, f"the parameter name '{name}' is not valid Unicode (a lone UTF-16 surrogate)",
                                   name)
                stack.append((item, name))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value)))
                         if isinstance(item, (str, dict, list)))


# ---------------------------------------------------------------- parsing a request

UNSUPPORTED = {  # OpenAI parameters the engine does not implement: accepted only absent, null or neutral
    "n": (1,), "best_of": (1,), "logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "suffix": ("",),
    "logit_bias": ({},), "stop": ("", []), "presence_penalty": (0,), "frequency_penalty": (0,), "top_p": (1,),
    "seed": (), "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "response_format": ({"type": "text"},), "parallel_tool_calls": (), "top_k": (-1, 0), "min_p": (0,),
    "repetition_penalty": (1,), "use_beam_search": (False,),
}
COMMON = {"model", "max_tokens", "temperature", "stream", "stream_options", "ignore_eos", "min_tokens",
          "stop_token_ids", "user"}
FIELDS = {"completions": COMMON | {"prompt"} | set(UNSUPPORTED),
          "chat": COMMON | {"messages", "max_completion_tokens"} | set(UNSUPPORTED)}


def _same(v, a) -> bool:
    return isinstance(v, bool) == isinstance(a, bool) and v == a


def _int(body: dict, name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ApiError(400, f"{name} must be an integer >= {lo}, got {json.dumps(v)}", name)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(v)}", name)
    return bool(v)


@dataclass
class Parsed:
    """A request as the engine takes it."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def parse_request(body, kind: str, model_name: str, tokenizer, max_model_len: int) -> Parsed:
    """Check an /v1/completions (`kind="completions"`) or /v1/chat/completions (`"chat"`) body field by field;
    the first problem raises ApiError naming the field. Nothing is converted silently (1.5 is not 1 token)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    check_unicode(body)
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; this server takes: {', '.join(sorted(FIELDS[kind]))}",
                       unknown[0])
    for name, neutral in UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and not any(_same(v, a) for a in neutral):
            raise ApiError(400, f"{name}={json.dumps(v)} is not supported by labkit's engine (leave it out"
                           + (f" or send {json.dumps(neutral[0])})" if neutral else ")"), name)
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist here; this server serves {model_name!r}", "model",
                       "model_not_found")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}
                             or not isinstance(opts.get("include_usage", False), bool)):
        raise ApiError(400, f'stream_options must be {{"include_usage": true|false}}, got {json.dumps(opts)}',
                       "stream_options")
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature  # OpenAI's default
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ApiError(400, f"temperature must be a number >= 0 (0 is greedy), got {json.dumps(temperature)}",
                       "temperature")
    stops = body.get("stop_token_ids") or []
    if not isinstance(stops, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in stops):
        raise ApiError(400, f"stop_token_ids must be a list of integers, got {json.dumps(stops)}", "stop_token_ids")
    ids = _chat_ids(body.get("messages"), tokenizer, model_name) if kind == "chat" else \
        _prompt_ids(body.get("prompt"), tokenizer, model_name)
    name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _int(body, name, 1)
    if max_tokens is None:  # chat: the rest of the context, as vLLM does
        max_tokens = max(1, max_model_len - len(ids)) if kind == "chat" else DEFAULT_MAX_TOKENS
    ignore_eos = _bool(body, "ignore_eos")
    min_tokens = _int(body, "min_tokens", 0) or 0
    if min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens")
    if min_tokens == max_tokens:  # EOS and stop tokens cannot end it early: exactly max_tokens, as ignore_eos
        ignore_eos, stops = True, []
    elif min_tokens:
        raise ApiError(400, f"min_tokens={min_tokens} below max_tokens={max_tokens} is not implemented by labkit's "
                       "engine; min_tokens equal to max_tokens (or ignore_eos: true) fixes the output length",
                       "min_tokens")
    params = SamplingParams(max_tokens=max_tokens, temperature=float(temperature), ignore_eos=ignore_eos,
                            stop_token_ids=tuple(stops))
    return Parsed(ids, params, stream, bool((opts or {}).get("include_usage")))


def _prompt_ids(prompt, tokenizer, model_name: str) -> list[int]:
    """A string (with a tokenizer), a list of token ids, or OpenAI's batch form holding one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if prompt is None:
        raise ApiError(400, "prompt is required: a string or a list of token ids", "prompt")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ApiError(400, f"{model_name} has no tokenizer: send the prompt as a list of token ids", "prompt")
        return list(tokenizer(prompt)["input_ids"])
    if isinstance(prompt, list) and any(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(400, "one prompt per request: send a string or a list of token ids, not a batch", "prompt")
    if not isinstance(prompt, list):
        raise ApiError(400, f"prompt must be a string or a list of token ids, got {type(prompt).__name__}", "prompt")
    return prompt  # ints are checked by the engine (type and vocabulary range)


def _chat_ids(messages, tokenizer, model_name: str) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str) or set(m) - {"role", "content", "name"}:
            raise ApiError(400, f"messages[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", "
                                f"\"content\": a string}}, got {json.dumps(m)[:200]}", f"messages[{i}]")
    if tokenizer is None:
        raise ApiError(400, f"{model_name} has no tokenizer, so no chat template: use /v1/completions with a list "
                            "of token ids", "messages")
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, f"{model_name}'s tokenizer has no chat template: use /v1/completions with a prompt",
                       "messages")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template can raise anything (jinja errors, raise_exception)
        raise ApiError(400, f"the chat template refused these messages: {e}", "messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- text out

class Detokenizer:
    """Text as tokens arrive, without re-decoding everything: decode a short window and emit what it adds,
    holding back while a character is incomplete (a byte-level token may end inside a UTF-8 sequence)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, token_id: int) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.append(token_id)
        dec = self.tokenizer.decode
        prev = dec(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new = dec(self.ids[self.prefix:], skip_special_tokens=True)
        if len(new) > len(prev) and not new.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new[len(prev):]
        return ""
