"""Turning a trained TinyGPT into text: logits processing, sampling loops and beam search.

The logits processors are pure functions of a (B, V) tensor, each usable and tested alone:

    apply_temperature  logits / T; T = 0 keeps only the argmax (greedy decoding)
    top_k_filter       keep the k largest logits
    top_p_filter       keep the smallest set of tokens whose probability adds up to >= p
                       (nucleus sampling, Holtzman et al. 2019)

`sample_next` chains them and draws one token per row. `generate` and `generate_stream` run
the autoregressive loop with a KV cache: the prompt is processed once, then each step feeds only
the newest token and attends over the keys and values cached from earlier steps.

Past `block_size` the window slides. The model only ever sees the last `block_size` tokens at
most; when the next token would not fit, the window jumps forward to keep the last
`block_size // 2` tokens and the cache is rebuilt from them in one forward pass. Every position
in the window then moves, so cached keys cannot be reused (their learned or rotary positions
and their dependence on dropped tokens are both stale). Sliding by one token per step instead
would mean a full recomputation every step, the very cost the cache exists to avoid. Without a
cache (`use_cache=False`) the same window is recomputed from scratch each step, so both paths
produce the same tokens.

`beam_search` keeps the `beam_width` most probable continuations instead of sampling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_tiny.config import sampling_problem
from llm_tiny.model import TinyGPT, decode_layout
from llm_tiny.model.kvcache import KVCache
from llm_tiny.train.checkpoint import unwrap_model

# ----------------------------------------------------------------------------- logits processing


def check_sampling_args(
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> None:
    """Raise ValueError, naming the allowed range, for an impossible sampling setting
    (the rules: `config.SAMPLING_RULES`)."""
    problem = sampling_problem(
        temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram,
    )  # fmt: skip
    if problem is not None:
        raise ValueError(problem)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide logits (..., V) by the temperature; 0 keeps only the largest logit.

    [1., 2., 4.] at 2.0 -> [0.5, 1.0, 2.0]; at 0.0 -> [-inf, -inf, 4.0]. Below 1 sharpens the
    distribution, above 1 flattens it. At 0 the first maximal entry survives, like argmax.
    """
    check_sampling_args(temperature)
    if temperature == 0:
        keep = F.one_hot(logits.argmax(dim=-1), logits.size(-1)).bool()
        return logits.masked_fill(~keep, float("-inf"))
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set every logit (..., V) below the k-th largest of its row to -inf.

    [1., 3., 2., 5.] with k=2 -> [-inf, 3., -inf, 5.]. Logits tied with the k-th largest are
    kept too, so a row may keep more than k tokens; k >= V changes nothing.
    """
    check_sampling_args(1.0, top_k=k)
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, int(k), dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep, per row of logits (..., V), the smallest set of most probable tokens whose total
    probability is >= p; set the rest to -inf. The most probable token always stays.

    Probabilities [0.5, 0.25, 0.125, 0.125]: p=0.5 keeps token 0, p=0.6 and p=0.75 keep tokens
    0 and 1, p=1 keeps all four.
    """
    check_sampling_args(1.0, top_p=p)
    if p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # already enough without this token; never the first
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def repetition_penalty(logits: Tensor, seq: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019): in each row of logits (B, V), the tokens
    that occur in that row of `seq` (B, L) have a positive logit divided by `penalty` and a
    negative one multiplied by it, so with penalty > 1 they become less likely either way.

    [2., -1., 0.5] after tokens [0, 1] with penalty 2 -> [1., -2., 0.5]. Penalty 1 is a no-op.
    """
    if penalty == 1:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, seq, True)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def repeating_tokens(seq: list[int], n: int) -> set[int]:
    """The tokens that would end `seq` with an n-gram it already contains: for every earlier
    place where its last n - 1 tokens occur, the token that followed them there.

    [1, 2, 3, 1, 2] with n = 3 -> {3} (1 2 3 again); with n = 2 -> {3} (2 3 again); n = 1
    bans every token seen. n = 0 bans nothing.
    """
    if n < 1 or len(seq) < n - 1:
        return set()
    tail = seq[len(seq) - n + 1 :] if n > 1 else []
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == tail}


def no_repeat_ngram(logits: Tensor, seq: Tensor, n: int) -> Tensor:
    """Set to -inf, in each row of logits (B, V), the tokens that would repeat an n-gram of
    that row of `seq` (B, L) (`repeating_tokens`); n = 0 is a no-op."""
    if n == 0:
        return logits
    banned = torch.zeros_like(logits, dtype=torch.bool)
    for row, tokens in enumerate(seq.tolist()):
        banned[row, sorted(repeating_tokens(tokens, n))] = True
    return logits.masked_fill(banned, float("-inf"))


def discourage_repeats(logits: Tensor, seq: Tensor, penalty: float, ngram: int) -> Tensor:
    """Both anti-repetition rules on the next-token logits (B, V) of sequences `seq` (B, L)."""
    return no_repeat_ngram(repetition_penalty(logits, seq, penalty), seq, ngram)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token id per row of logits (B, V) -> (B,). Temperature 0 is greedy argmax."""
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- the window


def slide_start(start: int, length: int, block_size: int) -> int:
    """Where the visible window of a sequence of `length` tokens begins, given that it began at
    `start` before the newest token: unchanged while it fits in `block_size`, else moved to
    keep the last `block_size // 2` tokens (at least one).

    slide_start(0, 8, 8) -> 0;  slide_start(0, 9, 8) -> 5;  slide_start(5, 12, 8) -> 5.
    """
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


class _Window:
    """Feeds the model the visible window of a growing sequence, with or without a KV cache."""

    def __init__(self, model: TinyGPT, batch_size: int, length: int, use_cache: bool) -> None:
        self.model = model
        self.block_size = model.config.block_size
        self.start = max(0, length - self.block_size)  # a long prompt keeps its last block
        self.cache: KVCache | None = model.new_cache(batch_size) if use_cache else None

    def next_logits(self, seq: Tensor) -> Tensor:
        """Logits (B, V) for the token after seq (B, L), in float32."""
        start = slide_start(self.start, seq.size(1), self.block_size)
        if self.cache is None:
            new = seq[:, start:]  # recompute the whole window
        else:
            if start != self.start:
                self.cache.reset()  # positions moved: rebuild the cache from the new window
            new = seq[:, start + self.cache.length :]  # only tokens not cached yet
        self.start = start
        logits, _ = self.model(new, cache=self.cache)
        return logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


@contextlib.contextmanager
def _generating(model: TinyGPT) -> Iterator[None]:
    """Generation mode: dropout off, inference mode, and on CPU the faster weight layout for
    token-by-token products (`model.decode_layout`); the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), decode_layout(model):
            yield
    finally:
        model.train(was_training)


def _prepare(model: nn.Module, idx: Tensor, max_new_tokens: int, single: bool) -> TinyGPT:
    """Check the prompt and return the bare TinyGPT: generation runs eagerly, because a
    compiled graph would be rebuilt for every cache length."""
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (batch, time) tensor of token ids, got {shape}")
    if idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
    if single and idx.size(0) != 1:
        raise ValueError(f"expected one prompt, idx of shape (1, T); got {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return unwrap_model(model)


# ----------------------------------------------------------------------------- sampling


def _sample_loop(
    model: TinyGPT,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: Iterable[int] | None,
    generator: torch.Generator | None,
    use_cache: bool,
    penalty: float = 1.0,
    ngram: int = 0,
) -> Iterator[Tensor]:
    """Yield the next token of every row (B,) until max_new_tokens or every row has stopped.

    A row that produced a stop token repeats it from then on (and the model still runs on it,
    which is harmless and keeps the batch rectangular).
    """
    stops = torch.tensor(sorted(set(stop_tokens or ())), dtype=torch.long, device=idx.device)
    window = _Window(model, idx.size(0), idx.size(1), use_cache)
    seq = idx
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = discourage_repeats(window.next_logits(seq), seq, penalty, ngram)  # (B, V)
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        token = torch.where(done, seq[:, -1], token)
        yield token
        if stops.numel():
            done |= torch.isin(token, stops)
            if bool(done.all()):
                return
        seq = torch.cat([seq, token[:, None]], dim=1)  # (B, L + 1)


def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    *,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> Tensor:
    """Continue each row of idx (B, T) by up to `max_new_tokens` tokens: (B, T + new).

    Stops early once every row has produced one of `stop_tokens` (the stop token is included;
    rows that stopped earlier repeat theirs). Deterministic for a seeded `generator`, which must
    live on idx's device. `use_cache=False` recomputes the window every step (slow; the
    reference the cache is checked against) and gives the same tokens. A model wrapped by
    `torch.compile` or DDP is unwrapped: generation runs eagerly. `repetition_penalty` and
    `no_repeat_ngram` discourage repeats (`discourage_repeats`; prompt included).
    """
    check_sampling_args(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram)
    model = _prepare(model, idx, max_new_tokens, single=False)
    with _generating(model):
        loop = _sample_loop(
            model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator,
            use_cache, repetition_penalty, no_repeat_ngram,
        )  # fmt: skip
        out = torch.cat([idx, *(t[:, None] for t in loop)], dim=1)
    return out.clone()  # a normal tensor, usable outside inference mode (e.g. as training data)


def generate_stream(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    *,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> Iterator[int]:
    """Like `generate` for one prompt idx (1, T), but yield each new token id as it is made.

    Arguments are checked at the call, before the first token is asked for.
    """
    check_sampling_args(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram)
    model = _prepare(model, idx, max_new_tokens, single=True)

    def tokens() -> Iterator[int]:
        with _generating(model):
            loop = _sample_loop(
                model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator,
                use_cache, repetition_penalty, no_repeat_ngram,
            )  # fmt: skip
            for token in loop:
                yield int(token[0])

    return tokens()


# ----------------------------------------------------------------------------- beam search


def beam_search(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    beam_width: int,
    length_penalty: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    *,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> Tensor:
    """The most probable continuation of one prompt idx (1, T) that a beam search finds: (1, T + n).

    Each step extends every kept sequence (beam) by every token and keeps the `beam_width` best
    by total log-probability. A beam that produces a stop token is finished (stop token
    included). Sequences are ranked by log p / n^length_penalty, n being the number of new
    tokens: 0 compares raw totals (favouring short), 1 the mean per token. The search ends after
    `max_new_tokens` or once `beam_width` beams have finished. Width 1 is greedy decoding.
    Beams rank the log-probabilities after `discourage_repeats` (beam search on its own tends
    to loop: the most probable continuation of a loop is the loop).
    """
    check_sampling_args(1.0, None, None, repetition_penalty, no_repeat_ngram)
    model = _prepare(model, idx, max_new_tokens, single=True)
    if isinstance(beam_width, bool) or int(beam_width) != beam_width or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width}")
    if max_new_tokens == 0:
        return idx.clone()
    stops = set(stop_tokens or ())
    W = int(beam_width)

    def rank(logp: float, n: int) -> float:
        return logp / n**length_penalty

    finished: list[tuple[float, Tensor]] = []  # (rank, sequence (L,))
    with _generating(model):
        seq = idx.repeat(W, 1)  # (W, L): W copies, of which only the first is alive at first
        scores = torch.full((W,), float("-inf"), device=idx.device)
        scores[0] = 0.0  # total log-probability of each beam's new tokens
        window = _Window(model, W, idx.size(1), use_cache)
        for step in range(1, max_new_tokens + 1):
            logits = window.next_logits(seq)  # (W, V)
            logits = discourage_repeats(logits, seq, repetition_penalty, no_repeat_ngram)
            logp = F.log_softmax(logits, dim=-1)
            V = logp.size(-1)
            candidates = (scores[:, None] + logp).flatten()  # (W * V,)
            # 2W candidates leave W alive ones even if W of them end with a stop token.
            top, flat = candidates.topk(min(2 * W, candidates.numel()))
            beams, tokens, kept = [], [], []
            for score, f in zip(top.tolist(), flat.tolist()):
                if score == float("-inf") or len(kept) == W:
                    break
                beam, token = divmod(f, V)
                if token in stops:
                    finished.append(
                        (rank(score, step), torch.cat([seq[beam], seq.new_tensor([token])]))
                    )
                else:
                    beams.append(beam)
                    tokens.append(token)
                    kept.append(score)
            if len(finished) >= W or not kept:
                break
            while len(kept) < W:  # pad with dead beams to keep the batch shape
                beams.append(beams[0])
                tokens.append(tokens[0])
                kept.append(float("-inf"))
            src = torch.tensor(beams, device=idx.device)
            seq = torch.cat([seq[src], torch.tensor(tokens, device=idx.device)[:, None]], dim=1)
            scores = torch.tensor(kept, device=idx.device)
            window.reorder(src)
        else:  # ran to max_new_tokens: the live beams compete with the finished ones
            finished += [
                (rank(s, max_new_tokens), seq[b]) for b, s in enumerate(scores.tolist())
                if s > float("-inf")
            ]  # fmt: skip
        best = max(finished, key=lambda item: item[0])[1]
    return best[None].clone()  # (1, T + n)
