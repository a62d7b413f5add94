"""Regenerate the README's pictures from the current code: `make pictures` (python -m mammo_pipeline.docs_pictures).

Uses the demo's MAMMO_HOME (running `mammo demo` first when it has no model yet), copies the report pictures
into docs/images/, and screenshots the Dagster UI's asset graph and the labeling app in headless Chromium.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# report picture -> README name
REPORT_PICTURES = {
    "accuracy_by_round.png": "accuracy_by_round.png",
    "confusion_matrix.png": "confusion_matrix.png",
    "missed_audit.png": "false_negatives.png",
}
WAREHOUSE_PICTURES = {
    "metadata_completeness.png": "metadata_completeness.png",
    "prediction_summary.png": "prediction_summary.png",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(cmd: list[str], url: str, env: dict[str, str], timeout: float = 120) -> Iterator[None]:
    """Start a server process, wait until `url` answers, stop it afterwards."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} did not come up at {url}") from None
                time.sleep(1)
        yield
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@contextlib.contextmanager
def browser_page(url: str, wait_for: str, size: tuple[int, int] = (1500, 820)) -> Iterator:
    """A headless Chromium page (system Chromium, no downloads) opened on `url` once `wait_for` shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        page.wait_for_selector(wait_for, timeout=60_000)
        page.wait_for_timeout(2000)
        yield page
        browser.close()


def crop_to_content(path: Path, top: int, left: int, right_margin: int, pad: int = 24) -> Path:
    """Crop a screenshot to the bounding box of its non-background pixels right of `left`, below `top`."""
    from PIL import Image, ImageChops

    image = Image.open(path).convert("RGB")
    area = image.crop((left, top, image.width - right_margin, image.height))
    background = Image.new("RGB", area.size, area.getpixel((area.width - 1, area.height - 1)))
    box = ImageChops.difference(area, background).convert("L").point(lambda v: 255 if v > 24 else 0).getbbox()
    if box:
        x0, y0, x1, y1 = box
        keep = (max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, area.width), min(y1 + pad, area.height))
        area.crop(keep).save(path)
    return path


def copy_reports(settings: Settings) -> list[Path]:
    out = []
    for folder, names in ((settings.reports, REPORT_PICTURES), (settings.warehouse_reports, WAREHOUSE_PICTURES)):
        for src, dst in names.items():
            if (folder / src).exists():
                out.append(Path(shutil.copyfile(folder / src, IMAGES / dst)))
    return out


def dagster_ui(settings: Settings) -> Path:
    """The global asset lineage of the code location, groups expanded, side panels hidden."""
    port = free_port()
    env = dict(os.environ, **settings.as_env())
    cmd = [
        str(Path(sys.executable).parent / "dagster-webserver"),
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    path = IMAGES / "dagster_asset_graph.png"
    with serve(cmd, f"{base}/server_info", env), browser_page(f"{base}/asset-groups", "svg") as page:
        skip = page.get_by_role("button", name="Skip")  # the community dialog, shown once per instance
        if skip.count():
            skip.click()
        page.mouse.click(900, 700, button="right")
        page.get_by_text("Expand all groups").locator("visible=true").first.click()
        page.get_by_text("Hide navigation").click()
        page.mouse.click(340, 80)  # the asset tree's toggle, left of the search box
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(path))
    return crop_to_content(path, top=110, left=75, right_margin=70)


def labeling_app(settings: Settings) -> Path:
    """The labeling app on the demo's label store, with the model's hint."""
    port = free_port()
    env = dict(os.environ, **settings.as_env())
    cmd = [str(Path(sys.executable).parent / "mammo"), "label", "--port", str(port), "--annotator", "demo"]
    path = IMAGES / "labeling_app_demo.png"
    with serve(cmd, f"http://127.0.0.1:{port}/", env), browser_page(f"http://127.0.0.1:{port}/", "img") as page:
        page.screenshot(path=str(path))
    return path


def main() -> None:
    settings = Settings.from_env()
    if not ModelRef.exists(settings.models):
        from mammo_pipeline.demo import run_demo

        run_demo(settings)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for path in [*copy_reports(settings), dagster_ui(settings), labeling_app(settings)]:
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
