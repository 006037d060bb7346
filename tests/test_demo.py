"""``mosaic-alm demo``: the Gradio app started by the console script on a loopback port, driven in headless Chromium:
upload a real clip, ask, read the model's answer from the page; bad uploads get a message in the page."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from chromium import Chromium

REPO = Path(__file__).resolve().parents[1]
STATUS = ("(() => { const t = document.querySelector('#status [data-testid=markdown]'); "
          "return t && t.innerText.trim() })()")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tiny_alm_artifact, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recipes.cli", "demo", str(tiny_alm_artifact), "--port",
                                 str(port), "--max-seconds", "5", "--max-new-tokens", "6"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < end, "the demo did not start serving in 180 s:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _upload_and_ask(browser: Chromium, url: str, clip: Path, question: str | None = None) -> str:
    """Open the page, upload ``clip``, optionally type a question, press Ask; the status line when it comes."""
    browser.open(url)
    browser.wait_for("document.querySelector('#clip input[type=file]') !== null", 60)
    browser.set_files("#clip input[type=file]", [str(clip)])
    browser.wait_for("document.querySelector('#clip [data-testid=upload-text]') === null", 30)  # uploaded
    if question is not None:
        browser.eval(f"""(() => {{ const t = document.querySelector('#question textarea');
            t.value = {json.dumps(question)}; t.dispatchEvent(new Event('input', {{bubbles: true}})); }})()""")
    time.sleep(1.0)  # let the upload's change event reach the server before the click
    browser.eval("document.querySelector('#ask').click()")
    return browser.wait_for(STATUS, 180)


def test_demo_answers_an_uploaded_clip(demo_url, embedded_instructions, tiny_alm_artifact):
    import torch

    from encoder.features import load_audio
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.generation import ask

    embedded_root = embedded_instructions
    rec = next(r for r in json.loads((embedded_root / "instructions" / "test.json").read_text())
               if r["qtype"] == "keyword_word")
    clip, question = embedded_root / rec["audio_path"], "Which word is spoken?"
    with Chromium() as browser:
        status = _upload_and_ask(browser, demo_url, clip, question)
        answer = browser.eval("document.querySelector('#answer textarea').value")
        caption = browser.eval("document.querySelector('#caption textarea').value")
        views = browser.wait_for("(() => { const i = document.querySelector('#views img');"
                                 " return i && i.complete && i.naturalWidth })()", 30)
        errors = browser.errors()
    assert status.startswith(clip.name) and "s clip" in status, status
    assert answer.strip() and caption.strip() and views > 0
    assert errors == []
    # the page shows the artifact's own greedy answer to the typed question
    torch.set_num_threads(1)
    model = load_alm(tiny_alm_artifact)
    assert answer == ask(model, load_audio(clip), question, max_new_tokens=6)


def test_demo_bad_uploads_get_a_message(demo_url, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not audio samples\n")
    too_long = tmp_path / "long.wav"
    sf.write(too_long, (0.1 * np.sin(np.arange(16000 * 6) / 8.0)).astype(np.float32), 16000)  # 6 s > --max-seconds 5
    with Chromium() as browser:
        msg = _upload_and_ask(browser, demo_url, not_audio)
        assert msg.startswith("Cannot use notes.wav: cannot decode"), msg
        assert browser.eval("document.querySelector('#answer textarea').value") == ""
        msg = _upload_and_ask(browser, demo_url, too_long)
        assert msg == "Cannot use long.wav: declares 6.0 s of audio, above the 5 s maximum.", msg
    # the server is still up and answering after both
    with urllib.request.urlopen(demo_url, timeout=10) as r:
        assert r.status == 200
