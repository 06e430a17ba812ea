"""The OpenAI wire format the stand-in speaks: request validation, responses, errors.

Only what the stand-in needs is validated, and with the statuses and error
shape of the OpenAI API (``{"error": {"message", "type", "param", "code"}}``),
so clients and the OpenAI SDK react to it as they would to a real service.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_COMPLETION_TOKENS",
    "ApiError",
    "ChatRequest",
    "Completion",
    "parse_chat_request",
]

#: Tokens generated when the request does not say: short answers keep tests and demos quick.
DEFAULT_MAX_TOKENS: Final = 16
#: The stand-in's "context window": larger requests are refused, as a real server refuses them.
MAX_COMPLETION_TOKENS: Final = 4096
_MAX_MESSAGES: Final = 1024
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
# Filler text: the content is irrelevant, only its length and pace matter.
_WORDS: Final = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


class ApiError(Exception):
    """An error answered in the OpenAI format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the stand-in acts on."""

    model: str
    max_tokens: int
    explicit_limit: bool
    stream: bool
    include_usage: bool
    prompt_tokens: int


def parse_chat_request(raw: bytes, *, models: frozenset[str]) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; raises :class:`ApiError`."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is a required property and must be a string.", param="model")
    if model not in models:
        raise ApiError(
            404, f"The model `{model[:64]}` does not exist.", param="model", code="model_not_found"
        )
    prompt_tokens = _prompt_tokens(body.get("messages"))
    # max_completion_tokens is the newer name of max_tokens; the API accepts either.
    limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = body.get(limit_name)
    if limit is not None and (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or not 1 <= limit <= MAX_COMPLETION_TOKENS
    ):
        raise ApiError(
            400,
            f"'{limit_name}' must be an integer from 1 to {MAX_COMPLETION_TOKENS}.",
            param=limit_name,
            code="invalid_value",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean.", param="stream")
    return ChatRequest(
        model=model,
        max_tokens=DEFAULT_MAX_TOKENS if limit is None else limit,
        explicit_limit=limit is not None,
        stream=stream,
        include_usage=_include_usage(body.get("stream_options"), stream=stream),
        prompt_tokens=prompt_tokens,
    )


def _prompt_tokens(messages: object) -> int:
    """Check ``messages`` and count its words, the stand-in's notion of a token."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
    if len(messages) > _MAX_MESSAGES:
        raise ApiError(
            400, f"'messages' holds more than {_MAX_MESSAGES} entries.", param="messages"
        )
    words = 0
    for index, message in enumerate(messages):
        where = f"messages.[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ApiError(400, f"{where} must be an object with a valid 'role'.", param=where)
        content = message.get("content")
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, f"{where}.content parts must be objects.", param=where)
                text = part.get("text")
                words += len(text.split()) if isinstance(text, str) else 0
        elif content is not None:
            raise ApiError(400, f"{where}.content must be a string or an array.", param=where)
    return words


def _include_usage(options: object, *, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise ApiError(
            400, "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(
            400, "'stream_options.include_usage' must be a boolean.", param="stream_options"
        )
    return bool(options.get("include_usage", False))


class Completion:
    """The answer to one request, in either shape: one JSON document or a stream of chunks."""

    __slots__ = ("_base", "_request")

    def __init__(self, request: ChatRequest, *, created: int) -> None:
        self._request = request
        self._base = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "created": created,
            "model": request.model,
        }

    @staticmethod
    def token(index: int) -> str:
        return _WORDS[index % len(_WORDS)] + " "

    @property
    def finish_reason(self) -> str:
        # Every answer is exactly max_tokens long: "length" when the client set
        # the limit, a natural "stop" when it took the default.
        return "length" if self._request.explicit_limit else "stop"

    def usage(self) -> dict[str, int]:
        prompt, completion = self._request.prompt_tokens, self._request.max_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def document(self) -> dict[str, Any]:
        text = "".join(self.token(i) for i in range(self._request.max_tokens))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": self.finish_reason,
            "logprobs": None,
        }
        return {
            **self._base,
            "object": "chat.completion",
            "choices": [choice],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, str], *, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _event({**self._base, "object": "chat.completion.chunk", "choices": [choice]})

    def usage_chunk(self) -> bytes:
        return _event(
            {**self._base, "object": "chat.completion.chunk", "choices": [], "usage": self.usage()}
        )


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
