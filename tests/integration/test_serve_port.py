"""`serve` on a port that is taken: one line, exit status 2, no banner, before the model loads."""

from __future__ import annotations

import socket
from pathlib import Path

from llm_tiny.serve.cli import main

RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_before_layout"


def test_a_busy_port_is_one_line_and_exit_2_without_the_banner(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["--ckpt", str(RUN), "--port", str(port), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"llm_tiny serve: error: --port {port}: 127.0.0.1:{port} is already in use (another "
        f"server?); stop it or pass another --port, e.g. --port {port + 1}"
    ]


def test_an_address_this_machine_does_not_have_is_one_line_and_exit_2(capsys):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): a literal address, so no name lookup, never local.
    code = main(["--ckpt", str(RUN), "--host", "192.0.2.1", "--port", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot listen on 192.0.2.1:0" in err
