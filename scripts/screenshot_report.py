"""Screenshot a run's report.html in headless Chromium (Debian's ``chromium``), checking it on the way:

    .venv/bin/python scripts/screenshot_report.py runs/pipeline results/report_screenshot.png [--width 1280]
        [--max-height 16000]

Waits until every image and audio player has loaded, prints what loaded, exits 1 if an image or a player is
broken or the console shows errors, and writes a full-page PNG (cut at --max-height pixels).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chromium import Chromium  # the browser tests' DevTools driver


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder holding report.html, or the HTML file itself")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--max-height", type=int, default=16000)
    args = p.parse_args(argv)
    page = Path(args.run)
    page = page / "report.html" if page.is_dir() else page
    if not page.is_file():
        print(f"screenshot_report: {page}: no such report (run mosaic-alm report first)", file=sys.stderr)
        return 1
    with Chromium(width=args.width) as browser:
        browser.open(page.resolve().as_uri())
        media = browser.media()
        errors = browser.errors()
        height = browser.eval("document.documentElement.scrollHeight")
        if height > args.max_height:
            browser.send("Emulation.setDeviceMetricsOverride", width=args.width, height=args.max_height,
                         deviceScaleFactor=1, mobile=False)
            browser.screenshot(args.out, full_page=False)
        else:
            browser.screenshot(args.out)
    bad_img = [i["alt"] for i in media["images"] if not i["width"]]
    bad_audio = [k for k, a in enumerate(media["audio"]) if a["error"] is not None or not a["duration"]]
    print(f"{page}: {len(media['images'])} images, {len(media['audio'])} audio players, page {height} px high; "
          f"wrote {args.out}")
    for what, items in (("broken images", bad_img), ("broken audio players", bad_audio), ("console errors", errors)):
        if items:
            print(f"  {what}: {items}", file=sys.stderr)
    return 1 if bad_img or bad_audio or errors else 0


if __name__ == "__main__":
    sys.exit(main())
