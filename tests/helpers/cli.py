"""Running the command line inside the test process."""

from __future__ import annotations

import contextlib
import io

from align_torch.cli import main


def run_cli(*argv) -> tuple[int, str, str]:
    """Run `align-torch ARGV` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()
