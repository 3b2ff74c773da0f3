"""The 2026 container's HTTP server: Grand Challenge's invoke API on the standard library alone.

``python -m nnunetv2_selma.submission.server`` (the 2026 image's ENTRYPOINT):

1. resolves the settings from the environment (as :mod:`.entrypoint`; the image sets
   ``SELMA_MODELS_DIR=/opt/ml/model``, where Grand Challenge extracts the separately uploaded
   ``model.tar.gz``) and loads every packed model ONCE;
2. only then listens (default ``0.0.0.0:4743``), so ``GET /health`` answers 200 exactly when
   the models are ready (Grand Challenge polls it until it does);
3. answers each ``POST /invoke`` (the request body, if any, is read and ignored: the case is
   what Grand Challenge provisioned under ``/input``) by segmenting the one image of
   ``/input/images/light-sheet-3d-microscopy/`` with the already loaded predictor and writing
   ``/output/images/isolated-biological-structure/output.mha`` (int8, the input's geometry);
   201 Created when the output is written, 500 with a JSON ``{"error": ...}`` naming the
   problem otherwise. Invocations run one at a time; ``/health`` stays answerable meanwhile.

If ``/input/inputs.json`` (written by Grand Challenge) is present it must list the edition's
input socket (each entry's ``socket``, or ``interface`` in older templates); otherwise the
invocation fails with a message naming the sockets found.

Options: ``--host`` (default 0.0.0.0), ``--port`` (default ``SELMA_PORT`` or 4743). Other settings:
the ``SELMA_*`` variables of :mod:`.entrypoint` (``python -m nnunetv2_selma.submission --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nnunetv2_selma.submission.entrypoint import (
    SubmissionError,
    SubmissionSettings,
    load_predictors,
    report_error,
    run_submission,
)
from nnunetv2_selma.submission.interface import INVOKE_PORT

log = logging.getLogger("nnunetv2_selma.submission.server")

#: the program name that starts each error line of ``python -m nnunetv2_selma.submission.server``
PROGRAM = "nnunetv2_selma.submission.server"

INPUTS_JSON = "inputs.json"


#: the key of an entry's socket: ``socket`` now, ``interface`` in older Grand Challenge templates
SOCKET_KEYS = ("socket", "interface")


def _socket_slug(path, index: int, entry) -> str:
    """The slug of one ``inputs.json`` entry, under either of ``SOCKET_KEYS``; anything else is named."""
    for key in SOCKET_KEYS:
        socket = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(socket, dict) and isinstance(socket.get("slug"), str):
            return socket["slug"]
    found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
    raise SubmissionError(f"{path}: entry {index} has {found}; expected a {' or '.join(repr(k) for k in SOCKET_KEYS)} "
                          f'object with a "slug" (Grand Challenge\'s inputs.json: [{{"socket": {{"slug": ...}}, '
                          f'"image": ...}}])')


def check_inputs_json(settings: SubmissionSettings) -> None:
    """Refuse a case whose ``inputs.json`` does not list the edition's input socket (absent file: fine)."""
    path = settings.input_root / INPUTS_JSON
    if not path.is_file():
        return
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: not JSON ({e}); expected Grand Challenge's inputs.json, a list of "
                              f'{{"socket": {{"slug": ...}}, ...}} entries') from e
    if not isinstance(entries, list):
        raise SubmissionError(f"{path}: found a JSON {type(entries).__name__}; expected Grand Challenge's "
                              f"inputs.json, a list of entries")
    sockets = [_socket_slug(path, i, entry) for i, entry in enumerate(entries)]
    if settings.edition.input_slug not in sockets:
        raise SubmissionError(f"{path}: input sockets {sockets}; this algorithm reads "
                              f"{settings.edition.input_slug!r} (edition {settings.edition.name})")


class InvokeApp:
    """Loaded models plus the per-case call; one instance per server process.

    Attributes
    ----------
    settings : SubmissionSettings
    predictors : dict of model name -> nnUNetPredictor, loaded once in ``__init__``
    invocations, failures : int
        Counts since start, reported by ``/health``.
    """

    def __init__(self, settings: SubmissionSettings):
        self.settings = settings
        start = time.perf_counter()
        self.predictors = load_predictors(settings)
        self.load_seconds = time.perf_counter() - start
        self.invocations = 0
        self.failures = 0
        self._lock = threading.Lock()  # one case at a time: /input and /output hold one case

    def health(self) -> dict:
        return {"status": "ready", "edition": self.settings.edition.name, "models": sorted(self.predictors),
                "device": self.settings.device, "load_seconds": round(self.load_seconds, 3),
                "invocations": self.invocations, "failures": self.failures}

    def invoke(self) -> tuple[int, dict]:
        """Segment the provisioned case; (HTTP status, JSON body)."""
        with self._lock:
            self.invocations += 1
            start = time.perf_counter()
            try:
                check_inputs_json(self.settings)
                output = run_submission(self.settings, self.predictors)
            except (SubmissionError, ValueError) as e:
                self.failures += 1
                log.error("invocation %d failed: %s", self.invocations, e)
                return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)}
            except Exception as e:  # the server must survive for the next case; the log has the traceback
                self.failures += 1
                log.exception("invocation %d failed", self.invocations)
                return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"}
            seconds = time.perf_counter() - start
            log.info("invocation %d done in %.1f s: %s", self.invocations, seconds, output)
            return HTTPStatus.CREATED, {"output": str(output), "seconds": round(seconds, 3)}


def make_handler(app: InvokeApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``: GET /health, POST /invoke, 404 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "nnunetv2-selma-invoke"

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/") or "/"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self._path() == "/health":
                self._reply(HTTPStatus.OK, app.health())
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path!r}; "
                                                            "GET /health, POST /invoke"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)  # Grand Challenge sends no case data in the body: ignored
            if self._path() == "/invoke":
                self._reply(*app.invoke())
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path!r}; "
                                                            "GET /health, POST /invoke"})

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def serve(settings: SubmissionSettings, host: str = "0.0.0.0", port: int = INVOKE_PORT) -> None:
    """Load the models, then serve until interrupted (SIGINT/SIGTERM end the process)."""
    app = InvokeApp(settings)
    httpd = ThreadingHTTPServer((host, port), make_handler(app))
    log.info("listening on http://%s:%d (GET /health, POST /invoke); models %s", host, httpd.server_port,
             sorted(app.predictors))
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    """Start the invoke server; 1 with a one-paragraph message when the models cannot be loaded."""
    p = argparse.ArgumentParser(prog="python -m nnunetv2_selma.submission.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SELMA_PORT", INVOKE_PORT)),
                   help=f"port (default SELMA_PORT or {INVOKE_PORT}, the port Grand Challenge calls)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        settings = SubmissionSettings.from_environment()
        serve(settings, args.host, args.port)
    except (SubmissionError, ValueError, OSError) as e:  # OSError: the port is taken, a file is unreadable
        return report_error(PROGRAM, e)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

