"""`python app.py`: flags, the model service, the review store and login, and the server.

Imported after ``serving.runtime.stay_offline`` has run (it imports gradio).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import gradio as gr
from gradio.utils import get_upload_folder
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware import Middleware

from review.auth import DEFAULT_HOST, LoginGuard, parse_auth, reviews_off_reason
from review.store import ReviewStore
from serving.access import FileGate, OwnerFolders, http_login
from serving.model_process import (
    LocalModel,
    ModelProcess,
    ModelService,
    ModelUnavailable,
    load_predictor,
)
from serving.runtime import configure_storage, data_dir, limit_malloc_arenas, on_spaces_gpu

MAX_UPLOAD = "100mb"
BuildDemo = Callable[[ModelService, int, ReviewStore, str, OwnerFolders], gr.Blocks]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The app's flags (each with an environment default for Spaces and containers)."""
    parser = argparse.ArgumentParser(description="Serve the LungCAM app.")
    parser.add_argument(
        "--model",
        help="checkpoint folder, .pt/.pth, or hf-hub:org/name "
        "(default: $LUNGCAM_MODEL, else the bundled model)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST,
        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; on any "
        "other address reviews and exports stay off unless $LUNGCAM_AUTH turns on a login)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="concurrent requests per forward (1: off)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model trunk (on CUDA: reduce-overhead, i.e. CUDA graphs)",
    )
    return parser.parse_args(argv)


def fail(message: object) -> None:
    """Stop the app with one line on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def start_model(args: argparse.Namespace, early: ModelService | None) -> ModelService:
    """The model service, loading: in this process on a ZeroGPU Space (its GPU attaches to
    calls made here), else in the model's own process (``early``, when already started)."""
    options = {"compile": args.compile}
    if early is None and on_spaces_gpu():
        return LocalModel(load_predictor(args.model, args.device, **options))
    model = early or ModelProcess()
    model.load(args.model, args.device, **options)
    return model


def serve(
    build_demo: BuildDemo,
    argv: Sequence[str] | None = None,
    early: ModelService | None = None,
    css: str = "",
) -> None:
    """Build the screen with ``build_demo`` and serve it (styled by ``css``) until stopped;
    bad flags, weights or settings stop the app with one line."""
    args = parse_args(argv)
    limit_malloc_arenas()
    configure_storage()
    try:
        model = start_model(args, early)
        auth = parse_auth()  # $LUNGCAM_AUTH: required on any public host that stores reviews
        store = ReviewStore.open(data_dir())
    except (ModelUnavailable, OSError, ValueError, SQLAlchemyError) as err:
        fail(err)
    reviews_off = reviews_off_reason(args.host, auth)
    if reviews_off:
        print(f"warning: {reviews_off}", flush=True)
    folders = OwnerFolders(get_upload_folder())  # in Gradio's cache: the data folder's
    folders.reset()
    try:  # the screen needs the config: read from a checkpoint folder, else from the weights
        demo = build_demo(model, args.max_batch_size, store, reviews_off, folders)
    except ModelUnavailable as err:  # e.g. no such checkpoint
        fail(err)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        auth=None if auth is None else http_login(LoginGuard(auth)),  # locks out guessing
        app_kwargs={"middleware": [Middleware(FileGate, folders=folders, data=store.data_dir)]},
        css=css,
        allowed_paths=[str(store.data_dir / "exports")],
        prevent_thread_lock=True,  # serve while the weights load: requests wait for them
    )
    try:
        model.wait_loaded()
    except ModelUnavailable as err:  # e.g. statistics fitted for another segmenter
        demo.close()
        fail(err)
    demo.block_thread()
