"""How pictures name things: a token's bytes as a label, a checkpoint argument as a run."""

from __future__ import annotations

from pathlib import Path


def token_label(token: bytes) -> str:
    """A token's bytes as a short axis label: spaces shown as `␣`, newlines and other control
    characters escaped (`\\n`), bytes that are not UTF-8 as `\\xNN`.

    >>> token_label(b" the"), token_label(b"\\n"), token_label(b"\\xe4")
    ('␣the', '\\\\n', '\\\\xe4')
    """
    from tok.serialize import render_token

    text = render_token(token)[1:-1]  # drop the quotes render_token adds
    return text.replace("\\'", "'").replace(" ", "␣")


def run_dir(ckpt: str) -> Path:
    """The run directory a `--ckpt` argument names (itself, or a .pt file's folder)."""
    p = Path(ckpt)
    return p if p.is_dir() else p.parent


def run_name(ckpt: str) -> str:
    """A short name for titles: `out/tiny`, or `tiny/last.pt` for a file."""
    p = Path(ckpt)
    return str(p) if p.is_dir() else f"{p.parent.name}/{p.name}"
