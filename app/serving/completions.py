"""Completions on a character language model, as the OpenAI completions API defines them: prompts
of token ids in, per choice a stream of text deltas out (echoed prompt, generated characters, their
log-probabilities and alternatives), ended by end-of-sequence, `max_tokens` or a stop string.

The step scheduler (`generation.py`) produces tokens; this module turns one sequence's tokens into
text: a stop string is cut (and never streamed: text that could begin one is held back until it
cannot), end-of-sequence is a token but no text, and offsets count the choice's characters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.errors import InvalidInput, ItemFailed, ServiceError
from app.serving.generation import FinishReason, GeneratingSequence, SequenceRequest, TokenLogProb
from models.sampling import SamplingParams, make_generator
from models.text import Vocab

# Tokens one completions request may generate, all its prompts and choices together.
MAX_GENERATED_TOKENS = 65_536


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One completions call, checked: each prompt's token ids (a start token first only where
    the client wrote one), and how to continue them."""

    prompts: list[list[int]]
    max_tokens: int
    echo: bool
    logprobs: int | None  # alternatives per position; None: no log-probabilities at all
    params: SamplingParams
    n: int
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompletionToken:
    token: str
    log_prob: float | None
    top: dict[str, float] | None
    text_offset: int


@dataclass(slots=True)
class CompletionDelta:
    """What one choice adds: text, its tokens (with log-probabilities when asked), and the
    finish reason on the last delta."""

    index: int
    text: str = ""
    tokens: list[CompletionToken] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class CompletionChoice:
    index: int
    text: str
    tokens: list[CompletionToken]
    finish_reason: FinishReason
    completion_tokens: int  # generated tokens, end-of-sequence included


def sequence_requests(
    request: CompletionRequest, vocab: Vocab, max_length: int, max_generated: int
) -> list[SequenceRequest]:
    """One sequence per prompt and choice (choice index = prompt index * n + j), each with its own
    random stream, so that its draws depend on its seed and index only. The model's bounds are
    checked here: top_k within its vocabulary, every prompt and its completion within its
    length, and all choices' tokens together within `max_generated`."""
    size = vocab.lm_vocab_size
    top_k = request.params.top_k
    if top_k > size:
        raise InvalidInput(f"top_k: {top_k}; the model has {size} tokens (0 keeps them all)")
    generated = len(request.prompts) * request.n * request.max_tokens
    if generated > max_generated:
        raise InvalidInput(
            f"max_tokens: {len(request.prompts)} prompts x n {request.n} x max_tokens "
            f"{request.max_tokens} = {generated} tokens; the limit is {max_generated} per "
            "request"
        )
    sequences = []
    for p, prompt in enumerate(request.prompts):
        field_name = "prompt" if len(request.prompts) == 1 else f"prompt[{p}]"
        ids, echo_from = _with_start(prompt, vocab, request.max_tokens, field_name)
        if len(ids) - 1 + request.max_tokens > max_length + 1:
            raise InvalidInput(
                f"max_tokens: the prompt has {len(ids) - 1} characters and max_tokens is "
                f"{request.max_tokens}; the model reads at most {max_length} characters and an "
                "end-of-sequence token"
            )
        for j in range(request.n):
            generator = None
            if not request.params.greedy:
                generator = make_generator(request.seed, stream=p * request.n + j)
            sequences.append(
                SequenceRequest(
                    prompt=tuple(ids),
                    max_new_tokens=request.max_tokens,
                    params=request.params,
                    generator=generator,
                    top_logprobs=request.logprobs or 0,
                    echo_from=echo_from if request.echo else None,
                )
            )
    return sequences


def _with_start(
    prompt: list[int], vocab: Vocab, max_tokens: int, field_name: str
) -> tuple[list[int], int]:
    """The prompt with its start token, and the first position an echo reports: a start token the
    client wrote is echoed, one added here is not."""
    explicit = bool(prompt) and prompt[0] == vocab.bos
    body = prompt[1:] if explicit else prompt
    if vocab.bos in body:
        raise InvalidInput(f"{field_name}: the start token <s> may only come first")
    if vocab.eos in body[:-1] or (body and body[-1] == vocab.eos and max_tokens > 0):
        raise InvalidInput(
            f"{field_name}: the end token </s> may only end a prompt that is not continued "
            "(max_tokens 0)"
        )
    return [vocab.bos, *body], 0 if explicit else 1


class ChoiceStream:
    """One choice of a completions call, read as deltas or collected whole."""

    def __init__(
        self,
        sequence: GeneratingSequence,
        index: int,
        request: CompletionRequest,
        vocab: Vocab,
    ) -> None:
        self.sequence, self.index = sequence, index
        self.request, self.vocab = request, vocab
        self.text = ""  # everything decided so far (echo, then generated), given out or held
        self.given = 0  # characters of `text` already given out
        self.generated_from = 0  # where generated text starts in `text`
        self.held: list[CompletionToken] = []  # tokens whose text is not given out yet
        self.completion_tokens = 0
        self.hold = max((len(s) for s in request.stop), default=1) - 1

    async def deltas(self) -> AsyncIterator[CompletionDelta]:
        """Until the finish reason; a stop string (or a consumer that stops reading) ends the
        sequence at the scheduler's next step."""
        try:
            while True:
                output = await self.sequence.outputs.get()
                if isinstance(output, BaseException):
                    raise (
                        output
                        if isinstance(output, ServiceError)
                        else ItemFailed(f"the model failed while generating: {output}")
                    )
                delta = self._delta(output.echo, output.token, output.finish_reason)
                if delta.finish_reason is not None or delta.text or delta.tokens:
                    yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self.sequence.cancel()

    async def collect(self) -> CompletionChoice:
        text, tokens = [], []
        finish: FinishReason = "length"
        async for delta in self.deltas():
            text.append(delta.text)
            tokens += delta.tokens
            finish = delta.finish_reason or finish
        return CompletionChoice(self.index, "".join(text), tokens, finish, self.completion_tokens)

    def _delta(
        self,
        echo: tuple[TokenLogProb, ...],
        token: TokenLogProb | None,
        finish: FinishReason | None,
    ) -> CompletionDelta:
        delta = CompletionDelta(self.index)
        for position in echo:
            self._append(position)
        if echo:
            self.generated_from = len(self.text)
            self._give(delta, len(self.text))
        if token is not None:
            self.completion_tokens += 1
            if token.token_id == self.vocab.eos:  # a token, but no text
                self._give(delta, len(self.text))
                self._token(token, len(self.text), delta.tokens)
                delta.finish_reason = "stop"
                return delta
            self._append(token)
            stop = self._stop_at()
            if stop is not None:
                self.text, self.held = (
                    self.text[:stop],
                    [t for t in self.held if t.text_offset < stop],
                )
                self._give(delta, stop)
                delta.finish_reason = "stop"
                return delta
        delta.finish_reason = finish
        self._give(delta, len(self.text) if finish else len(self.text) - self.hold)
        return delta

    def _append(self, position: TokenLogProb) -> None:
        self._token(position, len(self.text), self.held)
        self.text += self.vocab.token(position.token_id)

    def _token(self, position: TokenLogProb, offset: int, into: list[CompletionToken]) -> None:
        if self.request.logprobs is None:
            return
        top = None
        if self.request.logprobs and position.log_prob is not None:
            top = {self.vocab.token(i): log_prob for i, log_prob in position.top}
        token = self.vocab.token(position.token_id)
        into.append(CompletionToken(token, position.log_prob, top, offset))

    def _stop_at(self) -> int | None:
        """Where the earliest stop string begins in the generated text, if one has appeared."""
        generated = self.text[self.generated_from :]
        found = [i for i in (generated.find(s) for s in self.request.stop) if i >= 0]
        return self.generated_from + min(found) if found else None

    def _give(self, delta: CompletionDelta, upto: int) -> None:
        """Give out the text (and its tokens) before `upto`."""
        upto = max(upto, self.given, self.generated_from)
        delta.text += self.text[self.given : upto]
        delta.tokens += [t for t in self.held if t.text_offset < upto]
        self.held = [t for t in self.held if t.text_offset >= upto]
        self.given = upto
