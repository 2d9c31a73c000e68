"""The command owns its process's signals; `main` called in another process (a test, a notebook) does not."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from lora_ablation import cli


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE on this platform")
def test_main_in_process_leaves_sigpipe_as_python_set_it(capsys):
    # Python ignores SIGPIPE so a closed socket is an exception; were `main` to restore the default, the next
    # write to a peer that hung up (an HTTP client in the same process) would kill the whole process silently.
    before = signal.getsignal(signal.SIGPIPE)
    assert cli.main(["crd"]) == 0
    assert signal.getsignal(signal.SIGPIPE) == before == signal.SIG_IGN
    assert "CustomResourceDefinition" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE on this platform")
def test_the_command_piped_into_head_ends_quietly():
    # More output than a pipe holds, so the command is still writing when `head` has gone.
    command = f"{sys.executable} -m lora_ablation.cli plan examples/module-study.yaml -o json | head -c 100"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert len(result.stdout) == 100
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
