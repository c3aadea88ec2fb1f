"""Headless Chromium for the HTML report tests: where it is, and a screenshot of a page as a PIL image."""
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (CI installs Debian's "
                                    "`chromium` via .ci/system-deps; locally: apt-get install -y chromium)")


def screenshot(page, tmp_path, size=(1000, 1400)):
    """``page`` (an HTML file) rendered by headless Chromium at ``size``, as an RGB PIL image."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        im = im.convert("RGB")
    assert im.size == size
    return im
