"""Recipe: a local web demo of an ALM artifact (Gradio), one command:

    mosaic-alm demo runs/alm/pretrained/stage4/artifact [--port 7860] [--host 127.0.0.1]

Upload or record a clip, see its spectrogram and masked views, ask a question, get an answer and a caption. Clips
are bounded (``--max-seconds``, ``--max-upload``), one request runs at a time and at most ``--queue`` wait; a clip
that cannot be used gets a message in the page. Serves on the loopback interface unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="an ALM artifact folder (e.g. runs/pipeline/alm/pretrained/stage3/artifact, "
                                    "the default pipeline's last stage)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0: every interface)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest clip accepted")
    p.add_argument("--max-upload", default="20mb", help="largest upload accepted")
    p.add_argument("--queue", type=int, default=8, help="requests that may wait (one runs at a time)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port}: expected 1-65535")

    from mosaic_alm.artifact import load_alm
    from mosaic_core.config import ConfigError

    model = load_alm(args.artifact)
    if not model.cfg.audio.enabled:
        raise ConfigError(f"{args.artifact}: this artifact has no audio encoder (the no-audio baseline); the demo "
                          "needs one that listens")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from eval.demo_page import build_demo, demo_theme

    demo = build_demo(model, f"mosaic-alm demo: {args.artifact}", max_seconds=args.max_seconds,
                      max_new_tokens=args.max_new_tokens)
    demo.queue(max_size=args.queue, default_concurrency_limit=1)
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload, theme=demo_theme(),
                ssr_mode=False, quiet=True, footer_links=[], show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
