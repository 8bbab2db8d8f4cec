"""The console front end, driven through stdin as a script would, in a real process with the
offline defaults: embedded Postgres, local store, offline model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPT = """\
/imagine a lighthouse at dusk --ar 16:9 --n 2 --seed 7
vary 2
regenerate
/imagine --ar 16:9
/imagine a cat --n 9
wait
/balance
/history
/bogus
"""


def run_console(data_dir: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY")) and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **env},
        cwd=data_dir,
    )


def test_console_script_end_to_end(tmp_path: Path) -> None:
    result = run_console(tmp_path, SCRIPT)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in out + result.stderr
    paths = [Path(p) for p in re.findall(r"^\s+\d: (/\S+\.png)$", out, re.MULTILINE)]
    assert len(paths) == 6  # 2 + 2 variations + 2 regenerated
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > image.size[1]  # 16:9
    assert "seeds 7, 8" in out  # the seeds that made the two images
    assert "Please describe the image" in out
    assert "1 to 4 images" in out
    assert "Balance: 14 credits" in out
    assert out.count("· succeeded ·") == 3
    assert "Unknown command /bogus" in out

    # Data survives a restart: the history is still there in a new process.
    again = run_console(tmp_path, "/history\n")
    assert again.stdout.count("· succeeded ·") == 3


def test_cancel_from_the_console(tmp_path: Path) -> None:
    # One job at a time: the second request is still queued behind the first when `cancel` arrives.
    script = "/imagine a busy harbour --n 4\n/imagine a slow dragon --n 3\ncancel\nwait\n/balance\n"
    result = run_console(tmp_path, script, MAX_JOBS_IN_FLIGHT="1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cancelled. 3 credits refunded." in out
    assert "Balance: 16 credits" in out  # 20 - 4 (delivered) - 3 + 3 (refunded)
    assert out.count("done:") == 1


def test_invalid_configuration_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_console(tmp_path, "", MAX_PROVIDER_CALLS="lots")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("configuration error: MAX_PROVIDER_CALLS:")
    assert "Traceback" not in result.stderr


def test_an_edit_and_a_remix_from_the_console(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200), (0, 200, 0)).save(tmp_path / "my photo.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    script = (
        '/imagine make it snowy --image "my photo.png" --ar 16:9\n'
        "wait\n"
        "remix 1 the same, at night\n"
        "/imagine oops --image notes.txt\n"
        "/imagine oops --image missing.png\n"
        "wait\n/history\n"
    )
    result = run_console(tmp_path, script)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    paths = [Path(p) for p in re.findall(r"^\s+\d: (/\S+\.png)$", out, re.MULTILINE)]
    assert len(paths) == 2
    with Image.open(paths[0]) as edited:
        assert edited.size[0] > edited.size[1] and edited.getpixel((edited.size[0] // 2, 40)) == (0, 200, 0)
    assert "isn't a picture" in out and "can't read the file missing.png" in out
    assert "“the same, at night”" in out
    assert out.count("from your image (300×200)") == 1
    assert "Balance" not in out and out.count("· succeeded ·") == 2
